"""``train.py``'s checks made before any work: config files (text, YAML, registered classes with their
arguments), parse-error hints that name the valid choices, the resume check (same SDE, loss and
network as the checkpoint), and the short ``--help``."""

from __future__ import annotations

import os
from typing import Optional


def choices_hint(message: str) -> str:
    """Valid class names for the pluggable parts mentioned in a parse error."""
    from ..training.losses import LOSSES
    from ..core.sdes import SDE_CLASSES

    import inspect
    import re

    from ..training.registry import registered

    hints = []
    nested = re.search(r"NestedArg\(key='([\w.]+)'", message)
    for kind in ("sde", "loss", "net"):
        if nested and f"model.{kind}" in message:
            valid = {
                n: sorted(set(inspect.signature(c.__init__).parameters) - {"self", "args", "kwargs"})
                for n, c in registered(kind).items()
            }
            hints.append(f"unknown argument {nested.group(1)!r} for model.{kind}; valid arguments per class: {valid}")
    if "model.sde" in message:
        hints.append(f"valid model.sde choices: {sorted(SDE_CLASSES)} (lit_diffusion.core.sdes)")
    if "model.loss" in message:
        hints.append(f"valid model.loss choices: {sorted(c.__name__ for c in LOSSES.values())} (lit_diffusion.training.losses)")
    if "model.net" in message:
        hints.append("valid model.net choices: ['TimeMLP', 'UNet'] (lit_diffusion.training.networks) or any nn.Module net(x, t)")
    if '"data"' in message or "data." in message or "'data'" in message:
        hints.append(f"valid data choices: {sorted(registered('data'))} (lit_diffusion.training.data, .image_data)")
    return ("\n" + "\n".join(hints)) if hints else ""


def key_hint(message: str, parser) -> str:
    """For an unknown key (``Group 'model' does not accept option 'lrr'`` from a config file, or
    ``unrecognized arguments: --model.lrr``): the closest valid keys and all valid keys of its group."""
    import difflib
    import re

    bad = re.findall(r"Group '([\w.]+)' does not accept option '([\w.]+)'", message)
    for tok in re.findall(r"--([\w.]+)", message.split("unrecognized arguments:", 1)[1]) if "unrecognized arguments:" in message else []:
        group, _, key = tok.rpartition(".")
        bad.append((group, key))
    options = {o[2:] for a in getattr(parser, "_actions", []) for o in a.option_strings if o.startswith("--")}
    hints = []
    for group, key in bad:
        prefix = f"{group}." if group else ""
        names = sorted({o[len(prefix):].split(".")[0] for o in options if o.startswith(prefix) and len(o) > len(prefix)} - {""})
        names = [n for n in names if not n.endswith("+")]
        if not names:
            continue
        close = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
        guess = f"did you mean {', '.join(repr(prefix + c) for c in close)}? " if close else ""
        hints.append(f"unknown key {prefix + key!r}: {guess}valid keys of {group or 'the top level'!r}: {names}")
    return ("\n" + "\n".join(hints)) if hints else ""


def config_paths(args) -> list[str]:
    if isinstance(args, dict):
        return []
    paths, args = [], [str(a) for a in (args or [])]
    for i, a in enumerate(args):
        if a in ("--config", "-c") and i + 1 < len(args):
            paths.append(args[i + 1])
        elif a.startswith("--config="):
            paths.append(a.split("=", 1)[1])
    return paths


#: bounds on a config file: its size, and its number of YAML nodes once every alias is expanded (a
#: "billion laughs" file of a few nested aliases would otherwise exhaust the memory when expanded)
MAX_CONFIG_BYTES = 4 * 2**20
MAX_CONFIG_NODES = 100_000
#: packages whose classes a config may name for the trainer (callbacks, loggers, plugins...): installed
#: library code with no import side effects.  Anything else must be registered (``--register``).
TRUSTED_PACKAGES = ("lightning", "pytorch_lightning", "lit_diffusion")
_KINDS_AT = {"model.sde": "sde", "model.loss": "loss", "model.net": "net", "data": "data"}


def load_config_text(path: str):
    """The YAML mapping of config file ``path``, read within the bounds above (``ValueError`` naming
    the file, the bound and the value otherwise)."""

    if "\n" in str(path) and not os.path.exists(path):  # a config given as YAML text (jsonargparse accepts it)
        text = str(path)
        if len(text.encode()) > MAX_CONFIG_BYTES:
            raise ValueError(f"config text is {len(text.encode())} bytes; the bound is {MAX_CONFIG_BYTES} bytes")
        path = "<config text>"
        return _parse_config(text, path)
    try:
        size = os.path.getsize(path)
        if size > MAX_CONFIG_BYTES:
            raise ValueError(f"config file {path!r} is {size} bytes; the bound is {MAX_CONFIG_BYTES} bytes")
        raw = open(path, "rb").read()
    except OSError as e:
        raise ValueError(f"config file {path!r} cannot be read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"config file {path!r} is not a text (UTF-8 YAML) file: byte 0x{raw[e.start]:02x} at position {e.start}"
        ) from None
    return _parse_config(text, path)


def _parse_config(text: str, path: str):
    import yaml

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        n = _expanded_nodes(node)
        if n > MAX_CONFIG_NODES:
            raise ValueError(
                f"config file {path!r} expands to {n} YAML nodes (aliases counted where they are used); the bound is "
                f"{MAX_CONFIG_NODES}"
            )
        cfg = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"config file {path!r} is not valid YAML: {e}") from None
    if cfg is not None and not isinstance(cfg, dict):
        raise ValueError(f"config file {path!r} must hold a YAML mapping (model:, data:, trainer: ...); got a {type(cfg).__name__}")
    return cfg


def _expanded_nodes(node) -> int:
    """Nodes of a composed YAML document with aliases expanded, counted without expanding them."""
    import yaml

    memo: dict = {}

    def count(n) -> int:
        if n is None:
            return 0
        key = id(n)
        if key in memo:
            return memo[key]
        memo[key] = 1  # a recursive alias counts once
        if isinstance(n, yaml.MappingNode):
            c = 1 + sum(count(k) + count(v) for k, v in n.value)
        elif isinstance(n, yaml.SequenceNode):
            c = 1 + sum(count(v) for v in n.value)
        else:
            c = 1
        memo[key] = min(c, 10 * MAX_CONFIG_NODES)
        return memo[key]

    return count(node)


def _class_paths(value, where: str):
    """``(where, class_path)`` of every ``class_path`` entry inside a config value."""
    if isinstance(value, dict):
        if "class_path" in value:
            yield where, value["class_path"]
        for k, v in value.items():
            if k != "class_path":
                yield from _class_paths(v, f"{where}.{k}" if where else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _class_paths(v, f"{where}[{i}]")


def check_class_path(where: str, class_path, source: str) -> None:
    """Refuse a class path that the config may not name: ``model.sde/loss/net`` and ``data`` must be
    registered classes; elsewhere (trainer callbacks, loggers, plugins) a class of
    :data:`TRUSTED_PACKAGES` or a bare name.  Nothing is imported for a refused path."""
    from ..training.registry import UntrustedConfigError, registered, resolve

    kind = next((k for prefix, k in _KINDS_AT.items() if where == prefix or where.startswith(prefix + ".init_args")), None)
    if kind is not None and (where == "data" or where.count(".") == 1):
        try:
            resolve(kind, class_path)
            return
        except UntrustedConfigError:
            raise ValueError(
                f"{source}: {where}.class_path {class_path!r} is not a registered {kind} class, and configs are data: "
                f"nothing named in them is imported.\nvalid {where} choices: {sorted(registered(kind))} (register a class of "
                "your own with --register module.Class)"
            ) from None
    if not isinstance(class_path, str):
        raise ValueError(f"{source}: {where}.class_path must be a string; got {type(class_path).__name__}")
    top = class_path.split(".", 1)[0]
    if "." in class_path and top not in TRUSTED_PACKAGES and not _user_registered(class_path):
        raise ValueError(
            f"{source}: {where}.class_path {class_path!r} is outside the trusted packages {list(TRUSTED_PACKAGES)}, and "
            "configs are data: nothing they name is imported. Register the class with --register module.Class"
        )


def _user_registered(class_path: str) -> bool:
    return class_path in _REGISTERED_PATHS


_REGISTERED_PATHS: set = set()


def register_classes(paths) -> None:
    """``--register module.Class``: import ``module`` and register ``Class`` under its own name as an
    SDE, loss, data module or network (by its base class) -- the explicit, opt-in way to train a class
    of your own.  A trainer class (callback, logger...) named this way is allowed in configs too."""
    import importlib

    from ..training.registry import register

    for path in paths:
        mod, _, name = str(path).rpartition(".")
        if not mod or not name.isidentifier():
            raise ValueError(f"--register {path!r}: give module.Class (e.g. my_package.nets.MyNet)")
        try:
            cls = getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"--register {path!r}: cannot import it ({type(e).__name__}: {e})") from None
        if not isinstance(cls, type):
            raise ValueError(f"--register {path!r}: {type(cls).__name__} is not a class")
        _REGISTERED_PATHS.add(str(path))
        kind = _kind_of(cls)
        if kind is not None:
            register(kind, name, cls, aliases=(str(path),))


def _kind_of(cls) -> Optional[str]:
    from torch import nn

    from ..core.sdes import LinearSDE
    from ..training.data import BaseDataModule
    from ..training.losses import ScoreMatchingLoss

    for base, kind in ((LinearSDE, "sde"), (ScoreMatchingLoss, "loss"), (BaseDataModule, "data"), (nn.Module, "net")):
        if issubclass(cls, base):
            return kind
    return None


def split_register_flags(argv):
    """``(argv without --register flags, [module.Class, ...])``."""
    if not isinstance(argv, (list, tuple)):
        return argv, []
    out, paths, it = [], [], iter(list(argv))
    for a in it:
        if a == "--register":
            v = next(it, None)
            if v is None:
                raise ValueError("--register needs a value: module.Class")
            paths.append(v)
        elif str(a).startswith("--register="):
            paths.append(str(a).split("=", 1)[1])
        else:
            out.append(a)
    return out, paths


def _argv_class_paths(args):
    """``(where, value)`` of the command-line flags that name a class (``--model.net X``,
    ``--model.net.class_path X``, ``--data X``, ``--trainer.callbacks+=X``...)."""
    import re

    args = [str(a) for a in (args or [])]
    pairs = []
    for i, a in enumerate(args):
        if not a.startswith("--"):
            continue
        key, eq, val = a[2:].partition("=")
        if not eq:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                continue
            val = args[i + 1]
        key = key.rstrip("+")
        if key.endswith(".class_path"):
            key = key[: -len(".class_path")]
        if key in _KINDS_AT:
            if re.fullmatch(r"[A-Za-z_][\w.]*", val):
                pairs.append((key, val))
        elif key.startswith("trainer.") and re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", val):
            pairs.append((key, val))
    return pairs


def _rewrite_class_paths(value, said: list):
    from ..training.registry import current_path

    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k == "class_path" and isinstance(v, str) and current_path(v) != v:
                said.append(f"{v} -> {current_path(v)}")
                v = current_path(v)
            out[k] = _rewrite_class_paths(v, said) if k != "class_path" else v
        return out
    if isinstance(value, list):
        return [_rewrite_class_paths(v, said) for v in value]
    return value


def translate_former_paths(args):
    """``args`` with class paths under the package's former module names (``lit_diffusion.sdes.VP``,
    :data:`lit_diffusion.training.registry.FORMER_MODULES`) replaced by their homes now, in config
    files (passed on as YAML text) and on the command line, said once in a warning; ``args`` itself
    when nothing names a former module."""
    import warnings

    import yaml

    from ..training.registry import current_path

    if args is None or isinstance(args, dict):
        return args
    args, said, out = [str(a) for a in args], [], []
    i = 0
    while i < len(args):
        a = args[i]
        path = None
        if a in ("--config", "-c") and i + 1 < len(args):
            path, prefix, i = args[i + 1], [a], i + 1
        elif a.startswith("--config="):
            path, prefix = a.split("=", 1)[1], ["--config"]
        if path is not None and os.path.isfile(path):
            cfg = load_config_text(path)
            n = len(said)
            new = _rewrite_class_paths(cfg, said) if cfg is not None else None
            out += prefix + ([yaml.safe_dump(new, sort_keys=False)] if len(said) > n else [path])
        elif path is not None:
            out += prefix + [path]
        else:
            key, eq, val = a.partition("=")
            if a.startswith("--") and eq and current_path(val) != val:
                said.append(f"{val} -> {current_path(val)}")
                a = f"{key}={current_path(val)}"
            elif not a.startswith("--") and current_path(a) != a and i > 0 and args[i - 1].startswith("--"):
                said.append(f"{a} -> {current_path(a)}")
                a = current_path(a)
            out.append(a)
        i += 1
    if said:
        warnings.warn("former module names in the config, read as their homes now: " + "; ".join(dict.fromkeys(said)),
                      FutureWarning, stacklevel=2)
    return out


def check_config_files(args) -> None:
    """Check every ``--config`` file before jsonargparse reads it: a readable UTF-8 YAML mapping within
    the size and alias bounds, ``model.sde`` / ``model.loss`` / ``model.net`` / ``data`` entries
    naming a registered class with arguments it accepts, and no other class path outside the trusted
    packages; likewise the class-naming flags of the command line.  Errors name the file, the entry,
    the bad value and the valid choices."""
    from ..training.registry import UntrustedConfigError, check_description

    for where, value in _argv_class_paths(args):
        check_class_path(where, value, "command line")
    for path in config_paths(args):
        cfg = load_config_text(path)
        if cfg is None:
            continue
        for where, cp in _class_paths(cfg, ""):
            check_class_path(where, cp, f"config file {path!r}")
        entries = [(f"model.{k}", k, (cfg.get("model") or {}).get(k)) for k in ("sde", "loss", "net")]
        entries.append(("data", "data", cfg.get("data")))
        for where, kind, entry in entries:
            if not (isinstance(entry, dict) and "class_path" in entry):
                continue
            try:
                check_description(entry, kind, where=f"{where}")
            except UntrustedConfigError as e:
                raise ValueError(f"config file {path!r}: {e}") from None


def run_folder_of(args) -> str:
    """``<ckpt_dir>/<run_name>`` as the command line and its config files say (read before anything
    heavy is imported, so that the run lock is taken first)."""
    folder = {"ckpt_dir": "checkpoints", "run_name": "swissroll"}
    for path in config_paths(args):
        try:
            cfg = load_config_text(path) or {}
        except ValueError:
            continue  # reported by check_config_files
        for k in folder:
            if isinstance(cfg.get(k), str):
                folder[k] = cfg[k]
    args = [str(a) for a in (args or [])] if isinstance(args, (list, tuple)) else []
    for i, a in enumerate(args):
        for k in folder:
            if a == f"--{k}" and i + 1 < len(args):
                folder[k] = args[i + 1]
            elif a.startswith(f"--{k}="):
                folder[k] = a.split("=", 1)[1]
    return os.path.join(folder["ckpt_dir"], folder["run_name"])


def is_rank_zero_process() -> bool:
    """Whether this process is the first of its job (not a DDP/SLURM child rank)."""
    for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "GROUP_RANK"):
        v = os.environ.get(var)
        if v not in (None, "", "0"):
            return False
    return True


def take_run_lock(args):
    """The run lock of the folder ``args`` name, taken first (rank 0 only; ``None`` elsewhere and for
    ``--help``/``--print_config``)."""
    from ..runtime.run_lock import RunLock

    if not isinstance(args, (list, tuple)) or not is_rank_zero_process():
        return None
    if any(a in ("-h", "--help", "--help-full", "--print_config") or str(a).startswith("--print_config=") for a in args):
        return None
    return RunLock(run_folder_of(args)).acquire()


def check_resume(path: str, model) -> dict:
    """Refuse to resume from ``path`` unless it is a valid checkpoint whose hyper-parameters the
    registry trusts and whose SDE, loss and network match ``model``'s (the message shows both)."""
    from ..runtime.checkpoint_io import CheckpointError, read_checkpoint
    from ..training.module import check_hparams, describe
    from ..training.registry import UntrustedConfigError, check_description

    ckpt = read_checkpoint(path, require=("state_dict", "global_step"))
    try:
        hp = check_hparams(dict(ckpt.get("hyper_parameters") or {}), where=repr(path))
    except UntrustedConfigError as e:
        raise CheckpointError(str(e)) from None
    diffs = []
    for kind in ("sde", "loss", "net"):
        if hp.get(kind) is None:
            continue
        mine = describe(getattr(model, kind), kind)
        theirs = hp[kind]
        c1, a1 = check_description(theirs, kind)
        c2 = type(getattr(model, kind))
        a2 = mine["init_args"]
        a1n, a2n = normalised_args(a1), normalised_args(a2)
        shared = set(a1n) & set(a2n)
        if c1 is not c2 or any(a1n[k] != a2n[k] for k in shared):
            diffs.append(f"  {kind}: checkpoint {show_description(theirs)}\n  {' ' * len(kind)}  this run   {show_description(mine)}")
    if diffs:
        raise CheckpointError(
            f"refusing to resume from {path!r}: it was trained with a different model than this run's configuration:\n"
            + "\n".join(diffs)
            + "\nresume with the checkpoint's settings (or start a new run with another --run_name)"
        )
    _check_weights_fit(path, ckpt.get("state_dict"), model)
    return ckpt


def _check_weights_fit(path: str, state, model) -> None:
    """The checkpoint's weights have exactly the model's names and shapes (else CheckpointError)."""
    from ..runtime.checkpoint_io import CheckpointError

    if not isinstance(state, dict):
        raise CheckpointError(f"{path!r} is not a valid checkpoint: its state_dict is a {type(state).__name__}")
    mine = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(getattr(v, "shape", ())) for k, v in state.items()}
    missing, extra = sorted(set(mine) - set(theirs)), sorted(set(theirs) - set(mine))
    wrong = sorted(k for k in set(mine) & set(theirs) if mine[k] != theirs[k])
    if missing or extra or wrong:
        raise CheckpointError(
            f"{path!r} does not fit this model: missing weights {missing[:3]}, unexpected {extra[:3]}, "
            f"wrong shapes {[(k, theirs[k], mine[k]) for k in wrong[:3]]}"
        )


def normalised_args(args: dict) -> dict:
    def n(v):
        if isinstance(v, (list, tuple)):
            return [n(u) for u in v]
        if isinstance(v, dict):
            return {k: n(u) for k, u in v.items()}
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        return v

    return {k: n(v) for k, v in dict(args).items()}


def show_description(desc) -> str:
    if isinstance(desc, str):
        return desc
    args = ", ".join(f"{k}={v!r}" for k, v in sorted(dict(desc.get("init_args") or {}).items()))
    return f"{desc.get('class_path')}({args})"


#: the classes the registry builds by name, listed here so that ``--help`` needs no import of Lightning
#: or diffusers (``tests/integrations/test_ecosystem.py`` checks the list against the registry)
HELP_NAMES = {
    "net": ("TimeMLP", "UNet", "UNet2DModel"),
    "sde": ("ContractiveOU", "ContractiveVP", "DiscreteVP", "OU", "SubVP", "VE", "VP"),
    "loss": ("DSM", "ESM", "ISM", "SSM"),
    "data": ("CIFAR10DataModule", "DigitsDataModule", "ImageFolderDataModule", "MNISTDataModule", "MixtureDataModule",
             "SwissRollDataModule"),
}


def short_help() -> str:
    """``train.py --help``: the options people use and the project's own classes (``--help-full``
    prints jsonargparse's complete listing, every argument of every group)."""

    def names(kind):
        return ", ".join(HELP_NAMES[kind])

    return f"""usage: train.py [--config FILE] [--model.* ...] [--data CLASS] [--data.* ...] [--trainer.* ...] [options]

Train a score-based diffusion model (Lightning). With no arguments: the embedded default run
(swiss roll, small MLP, VP SDE, DSM, 2,000 steps).

common options:
  --config FILE             a YAML config (configs/*.yaml); later flags override it
  --run_name NAME           checkpoint folder <ckpt_dir>/<run_name>/ (default: swissroll)
  --ckpt_path last|FILE     resume (last: the newest loadable checkpoint of the run)
  --logger KIND             wandb (default; offline without an account), csv, tensorboard, none
  --ckpt_dir DIR, --log_dir DIR, --ckpt_every_n_steps N, --num_threads N, --progress_bar tqdm|rich|none
  --samples.every_n_steps N, --samples.n_samples N, --samples.steps N     pictures during training
  --quality.every_n_validations N, --quality.n_samples N, --quality.steps N  W1/MMD or FID/KID-MNIST at validation
  --print_config            print the full resolved configuration and exit
  --help-full               every option of every group (long)

model (--model.*): lr, warmup_steps, lr_schedule, ema_decay, p_uncond, autoencoder, compile, seed, ...
  --model.net CLASS         networks: {names("net")}
  --model.sde CLASS         SDEs: {names("sde")}
  --model.loss CLASS        losses: {names("loss")}
  e.g. --model.net UNet --model.net.preset 28x28 --model.net.num_classes 10 --model.sde VE --model.sde.sigma_max 50

data (--data CLASS, --data.*):  {names("data")}
trainer (--trainer.*):          Lightning Trainer arguments: max_steps, devices, strategy, precision, ...

Examples: see docs/training.md and configs/."""
