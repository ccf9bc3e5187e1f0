"""``train.py``'s command line: a subcommand-free :class:`lightning.pytorch.cli.LightningCLI`.

::

    python train.py                                   # embedded default: swiss roll, small MLP, VP, DSM
    python train.py --config configs/mnist.yaml --model.sde VP --model.sde.beta_max 20 --trainer.devices 4
    python train.py --ckpt_path last                  # resume from checkpoints/<run_name>/last.ckpt
    python train.py --logger csv                      # or tensorboard, wandb (default), none
    python train.py --print_config                    # the full resolved config

Besides the usual ``--model.*``, ``--data`` (class path shorthand, e.g. ``--data DigitsDataModule``),
``--data.*`` and ``--trainer.*`` groups it adds ``--samples.*`` (the
:class:`~lit_diffusion.callbacks.SamplePictures` callback) and these top-level options:

* ``--run_name`` (default ``swissroll``): checkpoints go to ``<ckpt_dir>/<run_name>/`` (``last.ckpt``
  and the newest ``step=N.ckpt``), pictures to ``<ckpt_dir>/<run_name>/samples/``;
* ``--ckpt_dir`` (``checkpoints``), ``--ckpt_every_n_steps`` (500);
* ``--ckpt_path``: ``last`` or a file to resume from; loaded with ``weights_only=True``;
* ``--logger``: ``wandb`` (default; offline when no account is configured), ``csv``, ``tensorboard``
  or ``none``; ``--log_dir`` (``logs``). A ``trainer.logger`` given in a config wins;
* ``--progress_bar``: ``tqdm`` (default), ``rich`` or ``none``.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any, Literal, Optional

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from jsonargparse import lazy_instance

from ..training.callbacks import SamplePictures, SampleQuality
from ..training.data import BaseDataModule, SwissRollDataModule
from ..training.losses import DSM
from ..training.module import ScoreModule
from ..training.networks import TimeMLP
from ..core.sdes import VP

__all__ = ["DiffusionCLI", "main", "wandb_mode"]

LOGGERS = ("wandb", "csv", "tensorboard", "none")


def wandb_mode() -> str:
    """``online`` when an account is configured (``WANDB_API_KEY`` or a netrc entry for
    api.wandb.ai), else ``offline``; an explicit ``WANDB_MODE`` always wins."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        with open(netrc) as f:
            if "api.wandb.ai" in f.read():
                return "online"
    except OSError:
        pass
    return "offline"


def make_logger(kind: str, log_dir: str, run_name: str):
    """A Lightning logger of ``kind`` writing under ``log_dir``."""
    if kind not in LOGGERS:
        raise ValueError(f"unknown logger {kind!r}; valid choices: {list(LOGGERS)}")
    if kind == "none":
        return False
    os.makedirs(log_dir, exist_ok=True)
    if kind == "csv":
        return pl.loggers.CSVLogger(log_dir, name=run_name)
    if kind == "tensorboard":
        return pl.loggers.TensorBoardLogger(log_dir, name=run_name)
    mode = wandb_mode()
    if mode == "offline":
        os.environ["WANDB_MODE"] = "offline"  # no account: write locally, `wandb sync <run dir>` later
    return pl.loggers.WandbLogger(
        project=os.environ.get("WANDB_PROJECT", "lit_diffusion"),
        name=run_name,
        save_dir=log_dir,
        offline=mode == "offline",
    )


def _choices_hint(message: str) -> str:
    """Valid class names for the pluggable parts mentioned in a parse error."""
    from ..training import data as _data
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
        hints.append(f"valid model.sde choices: {sorted(SDE_CLASSES)} (lit_diffusion.sdes)")
    if "model.loss" in message:
        hints.append(f"valid model.loss choices: {sorted(c.__name__ for c in LOSSES.values())} (lit_diffusion.losses)")
    if "model.net" in message:
        hints.append("valid model.net choices: ['TimeMLP', 'UNet'] (lit_diffusion.networks) or any nn.Module net(x, t)")
    if '"data"' in message or "data." in message or "'data'" in message:
        names = [n for n in _data.__all__ if n.endswith("DataModule") and n not in ("BaseDataModule", "TensorDataModule")]
        hints.append(f"valid data choices: {names} (lit_diffusion.data)")
    return ("\n" + "\n".join(hints)) if hints else ""


def _key_hint(message: str, parser) -> str:
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


def _config_paths(args) -> list[str]:
    if isinstance(args, dict):
        return []
    paths, args = [], [str(a) for a in (args or [])]
    for i, a in enumerate(args):
        if a in ("--config", "-c") and i + 1 < len(args):
            paths.append(args[i + 1])
        elif a.startswith("--config="):
            paths.append(a.split("=", 1)[1])
    return paths


def check_config_files(args) -> None:
    """Check every ``--config`` file before jsonargparse reads it: a readable UTF-8 YAML mapping, and
    ``model.sde`` / ``model.loss`` / ``model.net`` / ``data`` entries naming a registered class with
    arguments it accepts.  Errors name the file, the entry, the bad value and the valid choices.
    (Class paths the registry does not know are left to jsonargparse's own type checks.)"""
    import yaml

    from ..training.registry import UntrustedConfigError, check_description, registered, resolve

    for path in _config_paths(args):
        try:
            raw = open(path, "rb").read()
        except OSError as e:
            raise ValueError(f"config file {path!r} cannot be read: {e.strerror or e}") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(
                f"config file {path!r} is not a text (UTF-8 YAML) file: byte 0x{raw[e.start]:02x} at position {e.start}"
            ) from None
        try:
            cfg = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"config file {path!r} is not valid YAML: {e}") from None
        if cfg is None:
            continue
        if not isinstance(cfg, dict):
            raise ValueError(f"config file {path!r} must hold a YAML mapping (model:, data:, trainer: ...); got a {type(cfg).__name__}")
        entries = [(f"model.{k}", k, (cfg.get("model") or {}).get(k)) for k in ("sde", "loss", "net")]
        entries.append(("data", "data", cfg.get("data")))
        for where, kind, entry in entries:
            if not (isinstance(entry, dict) and "class_path" in entry):
                continue
            try:
                resolve(kind, entry["class_path"])
            except UntrustedConfigError:
                if "." in str(entry["class_path"]):
                    continue  # a class of the user's own: jsonargparse checks it
                raise ValueError(
                    f"config file {path!r}: {where}.class_path {entry['class_path']!r} is unknown; "
                    f"valid choices: {sorted(registered(kind))}"
                ) from None
            try:
                check_description(entry, kind, where=f"{where}")
            except UntrustedConfigError as e:
                raise ValueError(f"config file {path!r}: {e}") from None


def _with_atomic_checkpoint_io(plugins):
    """Add :class:`lit_diffusion.checkpoint_io.AtomicCheckpointIO` (temporary file in the checkpoint's
    own folder, fsync, ``os.replace``) unless a ``CheckpointIO`` plugin is configured already."""
    from lightning.fabric.plugins import CheckpointIO

    from ..runtime.checkpoint_io import AtomicCheckpointIO

    if plugins is None:
        plugins = []
    elif not isinstance(plugins, (list, tuple)):
        plugins = [plugins]
    plugins = list(plugins)
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    return plugins or None



def embedded_defaults() -> dict:
    """The embedded default run shared by ``train.py`` and the Accelerate launcher: swiss roll, small
    time-conditioned MLP, VP SDE, DSM, 2,000 steps (``configs/swissroll.yaml`` says the same)."""
    return {
        "model.net": lazy_instance(TimeMLP, dim=2, hidden=128, n_blocks=3),
        "model.sde": lazy_instance(VP),
        "model.loss": lazy_instance(DSM),
        "model.lr": 2e-3,
        "model.warmup_steps": 100,
        "model.ema_decay": 0.995,
        "data": lazy_instance(SwissRollDataModule, n_samples=20000, batch_size=256),
        "trainer.max_steps": 2000,
        "trainer.log_every_n_steps": 50,
        "trainer.gradient_clip_val": 1.0,
    }

class RunConfig(SaveConfigCallback):
    """The resolved configuration of the run: written to ``<ckpt_dir>/<run_name>/config.yaml`` (the
    run's own folder: a resumed run rewrites its own file, another run never touches it) and to the
    versioned folder of a CSV/TensorBoard logger, and logged as hyper-parameters (``run_config``:
    model, data, trainer...) to every logger, so wandb's config and ``hparams.yaml`` hold the SDE,
    loss, network and data of the run."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.already_saved or not trainer.is_global_zero:
            return
        import yaml

        from ..runtime.checkpoint_io import atomic_write_bytes

        text = self.parser.dump(self.config, skip_none=False)
        folders = {os.path.join(self.config["ckpt_dir"], self.config["run_name"])}
        for logger in trainer.loggers:
            if isinstance(logger, (pl.loggers.CSVLogger, pl.loggers.TensorBoardLogger)):
                folders.add(logger.log_dir)
        for folder in folders:
            os.makedirs(folder, exist_ok=True)
            atomic_write_bytes(text.encode(), os.path.join(folder, self.config_filename))
        resolved = yaml.safe_load(text)
        keep = ("model", "data", "trainer", "run_name", "samples", "ckpt_every_n_steps")
        for logger in trainer.loggers:
            logger.log_hyperparams({"run_config": {k: resolved.get(k) for k in keep if k in resolved}})
        self.already_saved = True


class DiffusionCLI(LightningCLI):
    """LightningCLI with checkpointing, logging and picture defaults for diffusion training."""

    def __init__(self, args=None, run: bool = False, exit_on_error: bool = True, **kwargs):
        self.exit_on_error = exit_on_error
        parser_kwargs = kwargs.pop("parser_kwargs", {}) or {}
        parser_kwargs.setdefault("exit_on_error", exit_on_error)
        super().__init__(
            ScoreModule,
            BaseDataModule,
            subclass_mode_model=False,
            subclass_mode_data=True,
            args=args,
            run=run,
            auto_configure_optimizers=False,
            save_config_callback=RunConfig,
            save_config_kwargs={"overwrite": True},
            parser_kwargs=parser_kwargs,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--run_name", type=str, default="swissroll", help="name of the run (checkpoint folder)")
        parser.add_argument("--ckpt_dir", type=str, default="checkpoints", help="root folder of the checkpoints")
        parser.add_argument("--ckpt_every_n_steps", type=int, default=500, help="checkpoint interval (optimizer steps)")
        parser.add_argument("--ckpt_path", type=Optional[str], default=None, help="'last' or a checkpoint file to resume")
        parser.add_argument("--logger", type=Literal["wandb", "csv", "tensorboard", "none"], default="wandb")
        parser.add_argument("--log_dir", type=str, default="logs", help="folder of the logger's files")
        parser.add_argument("--progress_bar", type=Literal["tqdm", "rich", "none"], default="tqdm")
        parser.add_argument(
            "--num_threads", type=int, default=0,
            help="torch CPU threads (0: torch's default). 1 is fastest for the small 2-D MLPs, and far "
            "faster on a busy machine, where spinning OpenMP threads stall each other",
        )
        parser.add_class_arguments(SamplePictures, "samples")
        parser.add_class_arguments(SampleQuality, "quality")
        # the embedded default: swiss roll, small MLP, VP SDE, DSM (configs/swissroll.yaml says the same)
        parser.set_defaults(
            {
                **embedded_defaults(),
                "trainer.val_check_interval": 500,
                "trainer.check_val_every_n_epoch": None,
                "trainer.accelerator": "auto",
                "trainer.devices": 1,
                "num_threads": 1,
                "samples.every_n_steps": 1000,
                "samples.n_samples": 2000,
                "samples.steps": 200,
            }
        )

    # -- parse errors name the valid choices ------------------------------------------------------
    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        from jsonargparse import ArgumentError

        exit_on_error = getattr(parser, "exit_on_error", True)
        parser.exit_on_error = False
        try:
            check_config_files(sys.argv[1:] if args is None else args)
        except ValueError as e:
            if exit_on_error:
                print(f"train.py: error: {e}", file=sys.stderr, flush=True)
                raise SystemExit(2) from None
            raise
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as e:
            msg = str(e) + _choices_hint(str(e)) + _key_hint(str(e), parser)
            if exit_on_error:
                parser.exit_on_error = True
                parser.error(msg)
            raise ArgumentError(None, msg) from None
        finally:
            parser.exit_on_error = exit_on_error

    # -- trainer with our callbacks and logger ----------------------------------------------------
    def before_instantiate_classes(self) -> None:
        n = int(self.config.get("num_threads") or 0)
        if n < 0:
            raise ValueError(f"--num_threads={n} is invalid; it must be >= 0 (0: torch's default)")
        if n > 0:
            import torch

            torch.set_num_threads(n)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> pl.Trainer:
        c = self.config
        ckpt_dir = os.path.join(c["ckpt_dir"], c["run_name"])
        self.checkpoint_dir = ckpt_dir
        config = dict(config)
        self.checkpoint_callback = ModelCheckpoint(
                dirpath=ckpt_dir,
                filename="{step}",
                every_n_train_steps=int(c["ckpt_every_n_steps"]),
                save_last=True,
                save_top_k=1,
                monitor=None,
                # one run per folder (RunLock): overwrite, never write last-v1.ckpt beside a stale last.ckpt
                enable_version_counter=False,
            )
        from ..runtime.reliability import SignalCheckpoint

        self.signal_callback = SignalCheckpoint(dirpath=ckpt_dir)
        extra = [self.checkpoint_callback, self.signal_callback]
        # stop on an inf/NaN gradient before it reaches the weights; never save non-finite weights
        from ..runtime.reliability import NonFiniteGuard

        if not any(isinstance(cb, NonFiniteGuard) for cb in (config.get("callbacks") or [])):
            extra.append(NonFiniteGuard())
        s = c["samples"]
        samples_cb = SamplePictures(**{**dict(s), "out_dir": s.get("out_dir") or os.path.join(ckpt_dir, "samples")})
        self.samples_callback = samples_cb
        extra.append(samples_cb)
        if int(c["quality"]["every_n_validations"]) > 0:
            self.quality_callback = SampleQuality(**dict(c["quality"]))
            extra.append(self.quality_callback)
        if c["progress_bar"] == "rich":
            extra.append(RichProgressBar())
        elif c["progress_bar"] == "none":
            config["enable_progress_bar"] = False
        else:
            extra.append(TQDMProgressBar())
        if config.get("logger") in (None, True):
            config["logger"] = make_logger(c["logger"], c["log_dir"], c["run_name"])
        if not config.get("default_root_dir"):
            config["default_root_dir"] = ckpt_dir
        config["plugins"] = _with_atomic_checkpoint_io(config.get("plugins"))
        return super()._instantiate_trainer(config, list(callbacks) + extra)

    # -- run ------------------------------------------------------------------------------------------
    def fit(self) -> pl.Trainer:
        """``trainer.fit`` in a locked checkpoint folder, resuming from ``--ckpt_path`` (``last``: the
        loadable checkpoint of the run with the highest global step), after checking that the
        checkpoint is trusted and describes the same SDE, loss and network as this run."""
        from ..runtime.run_lock import RunLock

        lock = RunLock(self.checkpoint_dir) if self.trainer.is_global_zero else None
        if lock is not None:
            lock.acquire()  # FolderLockedError names the other run before any work
        try:
            ckpt_path = self._resume_path()
            self._fit(ckpt_path)
        finally:
            if lock is not None:
                lock.release()
        return self.trainer

    def _resume_path(self) -> Optional[str]:
        from ..runtime.checkpoint_io import latest_checkpoint

        ckpt_path = self.config["ckpt_path"]
        if ckpt_path not in (None, "last") and not os.path.isfile(ckpt_path):
            raise FileNotFoundError(f"--ckpt_path {ckpt_path!r}: no such checkpoint file (or use 'last')")
        if ckpt_path == "last":
            log = print if self.trainer.is_global_zero else None
            ckpt_path = latest_checkpoint(self.checkpoint_dir, log=log)
            if ckpt_path is None:
                warnings.warn(f"--ckpt_path last: no checkpoint in {self.checkpoint_dir!r} yet; starting from scratch")
        if ckpt_path is not None:
            check_resume(ckpt_path, self.model)
        return ckpt_path

    def _fit(self, ckpt_path: Optional[str]) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        try:
            with warnings.catch_warnings():
                if isinstance(self.datamodule, BaseDataModule):
                    # our data modules restore the data order themselves (BaseDataModule.state_dict)
                    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before")
                self.trainer.fit(self.model, datamodule=self.datamodule, ckpt_path=ckpt_path, weights_only=True)
        except SIGTERMException:
            raise self.signal_callback.interrupted(self.trainer.global_step) from None
        # the periodic checkpoint may predate the last steps: write last.ckpt at the final step
        # (through the same CheckpointIO plugin: AtomicCheckpointIO by default)
        cb = self.checkpoint_callback
        if cb is not None and getattr(cb, "_last_global_step_saved", -1) != self.trainer.global_step:
            self.trainer.save_checkpoint(os.path.join(self.checkpoint_dir, "last.ckpt"), weights_only=False)
            self.final_checkpoint = os.path.join(self.checkpoint_dir, "last.ckpt")

    def report(self) -> dict:
        """Paths of the checkpoint this run wrote last and of the last picture (printed by train.py)."""
        last = getattr(self, "final_checkpoint", None)
        cb = self.checkpoint_callback
        if last is None and cb is not None and cb.last_model_path:
            last = cb.last_model_path
        return {
            "checkpoint": last if last and os.path.isfile(last) else None,
            "samples": getattr(self.samples_callback, "last_path", None),
        }


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
        a1n, a2n = _norm(a1), _norm(a2)
        shared = set(a1n) & set(a2n)
        if c1 is not c2 or any(a1n[k] != a2n[k] for k in shared):
            diffs.append(f"  {kind}: checkpoint {_show(theirs)}\n  {' ' * len(kind)}  this run   {_show(mine)}")
    if diffs:
        raise CheckpointError(
            f"refusing to resume from {path!r}: it was trained with a different model than this run's configuration:\n"
            + "\n".join(diffs)
            + "\nresume with the checkpoint's settings (or start a new run with another --run_name)"
        )
    return ckpt


def _norm(args: dict) -> dict:
    def n(v):
        if isinstance(v, (list, tuple)):
            return [n(u) for u in v]
        if isinstance(v, dict):
            return {k: n(u) for k, u in v.items()}
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        return v

    return {k: n(v) for k, v in dict(args).items()}


def _show(desc) -> str:
    if isinstance(desc, str):
        return desc
    args = ", ".join(f"{k}={v!r}" for k, v in sorted(dict(desc.get("init_args") or {}).items()))
    return f"{desc.get('class_path')}({args})"


def short_help() -> str:
    """``train.py --help``: the options people use and the project's own classes (``--help-full``
    prints jsonargparse's complete listing, every argument of every group)."""
    from ..training.registry import registered

    def names(kind):
        return ", ".join(sorted(registered(kind)))

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


def main(args=None, exit_on_error: bool = True) -> DiffusionCLI:
    """Parse ``args`` (``sys.argv[1:]`` when None), train, print where the results are.

    Exit status: 0 when training finished; 143 / 130 after SIGTERM / SIGINT (a checkpoint at the
    current step was written and its path printed); 2 for a refused run (bad input, folder in use by
    another run, untrusted or mismatching checkpoint)."""
    from ..runtime.checkpoint_io import CheckpointError
    from ..runtime.run_lock import FolderLockedError

    argv = sys.argv[1:] if args is None else args
    if isinstance(argv, (list, tuple)):
        if any(a in ("-h", "--help") for a in argv):
            print(short_help(), flush=True)
            raise SystemExit(0)
        if "--help-full" in argv:
            args = ["--help" if a == "--help-full" else a for a in argv]
    cli = DiffusionCLI(args=args, exit_on_error=exit_on_error)  # args=None: sys.argv[1:] (train.py)
    try:
        cli.fit()
    except (FolderLockedError, CheckpointError) as e:
        if not exit_on_error:
            raise
        print(f"train.py: error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    if cli.trainer.is_global_zero:
        rep = cli.report()
        print(f"checkpoint: {rep['checkpoint']}", flush=True)
        print(f"samples:    {rep['samples']}", flush=True)
    return cli


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
