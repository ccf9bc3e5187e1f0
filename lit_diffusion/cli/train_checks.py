"""``train.py``'s checks made before any work, apart from the config files (:mod:`.config_files`):
parse-error hints that name the valid choices, the run folder and its lock, and the short ``--help``."""

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
