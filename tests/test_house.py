"""The package's layout: one home per module, imports down the layers only, former names as data.

* the import graph (parsed, nothing imported): no upward or peer-layer import, no private name taken
  across modules, no circle; docs/architecture.md's generated table matches the code;
* no alias modules: the top level holds ``__init__`` and three launchers that do nothing on import;
  ``import lit_diffusion`` imports neither the training layer nor Lightning;
* former class paths (``lit_diffusion.sdes.VP``...) still load from checkpoints and configs;
* behaviour unchanged by the reorganisation: samples from ``sample()`` and ``sample.py``, the weights of
  a tiny ``train.py`` run, a pipeline with ``SDEScheduler`` swapped in and an export equal those the code
  gave before it (``tests/data/behaviour_reference.safetensors``, written by
  ``tests/scripts/behaviour_reference.py`` from that code).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))
sys.path.insert(0, str(ROOT / "tests" / "scripts"))

import architecture_table as arch  # noqa: E402


def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="offline", PYTHONPATH=str(ROOT))
    return env


def test_imports_point_down_the_layers_with_no_circle_and_no_private_name():
    assert arch.problems() == []


def test_the_import_checker_sees_each_kind_of_fault(tmp_path, monkeypatch):
    """The checker itself: an upward import, a private name and a circle planted in a copy are reported."""
    import shutil

    pkg = tmp_path / "lit_diffusion"
    shutil.copytree(ROOT / "lit_diffusion", pkg, ignore=shutil.ignore_patterns("__pycache__", "assets"))
    (pkg / "core" / "utils.py").write_text((pkg / "core" / "utils.py").read_text() + "\nfrom ..training import losses\n")
    (pkg / "sampling" / "steps.py").write_text((pkg / "sampling" / "steps.py").read_text()
                                               + "\nfrom .samplers import _private_helper\n")
    monkeypatch.setattr(arch, "ROOT", tmp_path)
    monkeypatch.setattr(arch, "PKG", pkg)
    found = "\n".join(arch.problems())
    assert "core.utils (core) imports lit_diffusion.training.losses (training), a later layer" in found
    assert "takes the private name _private_helper of lit_diffusion.sampling.samplers" in found
    assert "import circle:" in found and "lit_diffusion.sampling.steps" in found


def test_the_architecture_table_matches_the_code():
    text = arch.DOC.read_text()
    assert arch.rendered(text) == text, "docs/architecture.md is out of date: python docs/architecture_table.py"


def test_no_alias_modules_and_launchers_do_nothing_when_imported():
    top = sorted(p.name for p in (ROOT / "lit_diffusion").glob("*.py"))
    assert top == ["__init__.py", "accelerate_train.py", "demo.py", "evaluate.py"]
    for path in (ROOT / "lit_diffusion").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign):
                for t in node.targets:
                    assert not (isinstance(t, ast.Subscript) and ast.unparse(t.value) == "sys.modules"), path
    code = ("import sys, lit_diffusion, lit_diffusion.evaluate, lit_diffusion.demo, lit_diffusion.accelerate_train\n"
            "print(sorted(m for m in sys.modules if m.startswith(('lit_diffusion.training', 'lit_diffusion.cli', "
            "'lightning', 'diffusers'))))\n"
            "print(hasattr(lit_diffusion.evaluate, 'main'), callable(lit_diffusion.DSM))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    imported, flags = r.stdout.strip().splitlines()
    assert imported == "[]", imported  # importing the package or a launcher pulls in no training, CLI or Lightning
    assert flags == "False True"  # a launcher defines nothing; lit_diffusion.DSM is there on first use


@pytest.mark.parametrize("launcher", ["lit_diffusion.evaluate", "lit_diffusion.demo"])
def test_launchers_run_their_command(launcher):
    r = subprocess.run([sys.executable, "-m", launcher, "--help"], capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0 and "usage:" in r.stdout, r.stderr[-2000:]


def test_former_class_paths_load_from_checkpoints():
    """A checkpoint written when modules lived at the top (``lit_diffusion.sdes.VP``...) loads through
    the registry's table of former names, as does every former path of a registered class."""
    from lit_diffusion.training.module import ScoreModule
    from lit_diffusion.training.networks import TimeMLP
    from lit_diffusion.training.former_names import FORMER_MODULES, current_path
    from lit_diffusion.training.registry import resolve

    net = TimeMLP(dim=2, hidden=8, n_blocks=1, time_dim=4)
    hp = {"net": {"class_path": "lit_diffusion.networks.TimeMLP", "init_args": {"dim": 2, "hidden": 8, "n_blocks": 1, "time_dim": 4}},
          "sde": {"class_path": "lit_diffusion.sdes.VE", "init_args": {"sigma_max": 5.0}},
          "loss": {"class_path": "lit_diffusion.losses.DSM", "init_args": {}}, "data_shape": [2]}
    state = ScoreModule(net=net, sde="VE", data_shape=[2]).state_dict()
    m = ScoreModule.from_checkpoint_dict({"hyper_parameters": hp, "state_dict": state})
    assert type(m.sde).__name__ == "VE" and m.sde.sigma_max == 5.0 and type(m.net) is TimeMLP
    assert resolve("data", "lit_diffusion.data.MNISTDataModule").__module__ == "lit_diffusion.training.image_data"
    assert resolve("data", "lit_diffusion.data.SwissRollDataModule").__module__ == "lit_diffusion.training.data"
    assert current_path("lit_diffusion.checkpoint_io.AtomicCheckpointIO") == "lit_diffusion.runtime.lightning_io.AtomicCheckpointIO"
    assert current_path("lit_diffusion.sampling_cli.main") == "lit_diffusion.cli.sample.main"
    assert current_path("my_pkg.nets.Net") == "my_pkg.nets.Net"
    for old, homes in FORMER_MODULES.items():  # every home exists
        for home in homes:
            assert (ROOT / (home.replace(".", "/") + ".py")).is_file(), (old, home)


def test_a_config_with_former_class_paths_trains(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "old.yaml"
    cfg.write_text(
        "model:\n  net:\n    class_path: lit_diffusion.networks.TimeMLP\n    init_args: {hidden: 16, n_blocks: 1, time_dim: 8}\n"
        "  sde:\n    class_path: lit_diffusion.sdes.VP\n  loss:\n    class_path: lit_diffusion.losses.DSM\n"
        "data:\n  class_path: lit_diffusion.data.SwissRollDataModule\n  init_args: {n_samples: 256, batch_size: 32}\n"
        "trainer:\n  max_steps: 3\n  limit_val_batches: 0\n  enable_model_summary: false\n"
        "  plugins:\n    - class_path: lit_diffusion.checkpoint_io.AtomicCheckpointIO\n"
    )
    from lit_diffusion.cli.train import main

    with pytest.warns(FutureWarning, match="former module names") as said:  # through train.main, in this process
        main(["--config", str(cfg), "--logger", "none", "--progress_bar", "none", "--samples.every_n_steps", "0",
              "--ckpt_dir", str(tmp_path / "ck"), "--run_name", "r"])
    said = " ".join(str(w.message) for w in said if issubclass(w.category, FutureWarning))
    assert "lit_diffusion.sdes.VP -> lit_diffusion.core.sdes.VP" in said
    assert "lit_diffusion.checkpoint_io.AtomicCheckpointIO -> lit_diffusion.runtime.lightning_io.AtomicCheckpointIO" in said
    ck = torch.load(tmp_path / "ck" / "r" / "last.ckpt", weights_only=True)
    assert ck["global_step"] == 3 and ck["hyper_parameters"]["sde"]["class_path"] == "VP"


def test_behaviour_is_unchanged_by_the_reorganisation():
    """Every user path gives what the code gave before the modules moved (bit-identical on the machine
    that wrote the reference; a tolerance of 1e-4 allows another CPU's float32 kernels: on an AVX-512
    machine the 6-step MNIST samples differ by 1.4e-5, while any change of sampler, grid or noise moves
    them by 1e-2 or more), except where a commit changed the samples on purpose and rewrote the
    reference (tests/scripts/behaviour_reference.py)."""
    from safetensors.torch import load_file

    import behaviour_reference

    want = load_file(str(ROOT / "tests" / "data" / "behaviour_reference.safetensors"))
    got = behaviour_reference.compute()
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].shape == want[k].shape, k
        assert torch.allclose(got[k], want[k], rtol=0, atol=1e-4), (k, float((got[k] - want[k]).abs().max()))


def test_tests_mirror_the_layers():
    """Each test module lives in the folder of the layer it tests; only the checks of the whole house
    and of the docs stay at the top."""
    top = sorted(p.name for p in (ROOT / "tests").glob("test_*.py"))
    assert top == ["test_docs.py", "test_house.py"]
    folders = {p.parent.name for p in (ROOT / "tests").rglob("test_*.py")} - {"tests"}
    assert folders <= set(arch.LAYERS), folders


def test_module_sizes_are_as_docs_architecture_says():
    """At most 400 lines a module, as docs/architecture.md "Sizes" says."""
    over = sorted(str(p.relative_to(ROOT / "lit_diffusion")) for p in (ROOT / "lit_diffusion").rglob("*.py")
                  if len(p.read_text().splitlines()) > 400)
    assert over == [], over
    assert "Every module meets the first" in arch.DOC.read_text()


def test_no_function_body_over_60_lines():
    """Function bodies, signature and docstring excluded, stay within 60 lines (docs/architecture.md
    "Sizes" lists the functions that are longer when those are counted)."""
    long = []
    for path in (ROOT / "lit_diffusion").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.body[1:] if ast.get_docstring(node) is not None else node.body
                if body and body[-1].end_lineno - body[0].lineno + 1 > 60:
                    long.append(f"{path.relative_to(ROOT)}:{node.name}")
    assert long == []
