"""``train.py``'s checks made before any work, apart from the config files (:mod:`.config_files`):
parse-error hints that name the valid choices, the run folder and its lock, the resume check (same
SDE, loss and network as the checkpoint), and the short ``--help``."""

from __future__ import annotations

import os

from .config_files import config_paths, load_config_text


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
    from ..training.module import ScoreModule, describe
    from ..training.registry import UntrustedConfigError, check_description

    ckpt = read_checkpoint(path, require=("state_dict", "global_step"))
    try:
        hp = ScoreModule.check_hparams(dict(ckpt.get("hyper_parameters") or {}), where=repr(path))
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
