"""``train.py``'s command line: a subcommand-free :class:`lightning.pytorch.cli.LightningCLI`.

::

    python train.py                                   # embedded default: swiss roll, small MLP, VP, DSM
    python train.py --config configs/mnist.yaml --model.sde VP --model.sde.beta_max 20 --trainer.devices 4
    python train.py --ckpt_path last                  # resume from checkpoints/<run_name>/last.ckpt
    python train.py --logger csv                      # or tensorboard, wandb (default), none
    python train.py --print_config                    # the full resolved config

Besides the usual ``--model.*``, ``--data`` (class path shorthand, e.g. ``--data DigitsDataModule``),
``--data.*`` and ``--trainer.*`` groups it adds ``--samples.*`` (the
:class:`~lit_diffusion.training.callbacks.SamplePictures` callback) and these top-level options:

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

from ..training.callbacks import SamplePictures, SampleQuality
from ..training.data import BaseDataModule
from ..training.module import ScoreModule

__all__ = ["DiffusionCLI", "main", "wandb_mode"]

from .train_setup import LOGGERS, embedded_defaults, make_logger, wandb_mode, with_atomic_checkpoint_io  # noqa: F401


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
        kwargs.setdefault("seed_everything_default", 0)  # the network's initialisation: no "No seed found" warning
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
        given = sys.argv[1:] if args is None else args
        try:
            translated = translate_former_paths(given)
            check_config_files(translated)
        except ValueError as e:
            if exit_on_error:
                print(f"train.py: error: {e}", file=sys.stderr, flush=True)
                raise SystemExit(2) from None
            raise
        try:
            if translated is not given:
                with warnings.catch_warnings():  # (Lightning's note on args given beside sys.argv: they are sys.argv, translated)
                    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter")
                    super().parse_arguments(parser, translated)
            else:
                super().parse_arguments(parser, args)
        except ArgumentError as e:
            msg = str(e) + choices_hint(str(e)) + key_hint(str(e), parser)
            if exit_on_error:  # the error and its hint, not a wall of usage text
                print(f"train.py: error: {msg}\n(train.py --help lists the common options)", file=sys.stderr, flush=True)
                raise SystemExit(2) from None
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
        # the run folder is ours: taken by the run lock (which creates it) and kept to one run by the
        # run id (lit_diffusion.training.run_folder), so Lightning's "exists and is not empty" is noise
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
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
        from ..training.run_folder import RunStamp

        self.run_stamp = RunStamp()
        extra = [self.run_stamp, self.checkpoint_callback, self.signal_callback]
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
        config["plugins"] = with_atomic_checkpoint_io(config.get("plugins"))
        # the signal callback and the run stamp first: at the end of training the final step is saved
        # before any other callback's on_train_end (pictures, the user's own) runs
        first = [self.run_stamp, self.signal_callback]
        return super()._instantiate_trainer(config, first + list(callbacks) + [c for c in extra if c not in first])

    # -- run ------------------------------------------------------------------------------------------
    def fit(self) -> pl.Trainer:
        """``trainer.fit`` in a locked checkpoint folder, resuming from ``--ckpt_path`` (``last``: the
        loadable checkpoint of the run with the highest global step), after checking that the
        checkpoint is trusted and describes the same SDE, loss and network as this run."""
        from ..runtime.run_lock import RunLock

        lock = None
        early = getattr(self, "early_lock", None)
        if self.trainer.is_global_zero and not (early is not None and early.folder == os.path.abspath(self.checkpoint_dir)):
            lock = RunLock(self.checkpoint_dir).acquire()  # FolderLockedError names the other run before any work
        try:
            ckpt_path = self._resume_path()
            self._fit(ckpt_path)
        finally:
            if lock is not None:
                lock.release()
        return self.trainer

    def _resume_path(self) -> Optional[str]:
        """The checkpoint to resume from, within this run only (:mod:`lit_diffusion.training.run_folder`):
        ``last`` skips, with a warning each, files that are unreadable, of another run or unfit for
        this model; a new run moves an older run's checkpoints aside."""
        from ..training.run_folder import prepare_run

        zero = self.trainer.is_global_zero
        resume, run_id = prepare_run(
            self.checkpoint_dir, self.config["ckpt_path"], fits=lambda p: check_resume(p, self.model),
            write=zero, log=print if zero else None,
        )
        self.run_stamp.run_id = run_id
        self.run_id = run_id
        for lg in self.trainer.loggers:  # wandb: a resumed run continues the same wandb run (its id is the run id)
            if isinstance(lg, pl.loggers.WandbLogger) and getattr(lg, "_experiment", None) is None and not lg._wandb_init.get("id"):
                lg._wandb_init.update(id=run_id, resume="allow")
                lg._id = run_id
        return resume

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
        # SignalCheckpoint.on_train_end saved the final step before the last picture; Lightning's
        # teardown restored the signal handlers: a signal from here on still ends the run at once
        from ..runtime.reliability import exit_on_signal

        self.final_checkpoint = self.signal_callback.final
        exit_on_signal(self.final_checkpoint, self.trainer.global_step, self.trainer.is_global_zero)

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


from .config_files import check_config_files, translate_former_paths  # noqa: E402
from ..training.checkpoint_schema import check_resume  # noqa: E402
from .train_checks import choices_hint, key_hint, short_help  # noqa: E402


def main(args=None, exit_on_error: bool = True, lock=None) -> DiffusionCLI:
    """Parse ``args`` (``sys.argv[1:]`` when None), train, print where the results are.

    Exit status: 0 when training finished; 143 / 130 after SIGTERM / SIGINT (a checkpoint at the
    current step was written and its path printed); 2 for a refused run (bad input, folder in use by
    another run, untrusted or mismatching checkpoint)."""
    from ..runtime.checkpoint_io import CheckpointError
    from ..runtime.run_lock import FolderLockedError
    from .config_files import register_classes, split_register_flags
    from .train_checks import take_run_lock

    argv = sys.argv[1:] if args is None else args
    if isinstance(argv, (list, tuple)):
        if any(a in ("-h", "--help") for a in argv):
            print(short_help(), flush=True)
            raise SystemExit(0)
        if "--help-full" in argv:
            argv = ["--help" if a == "--help-full" else a for a in argv]
    def refuse(e: Exception):
        """Bad input or a refused run: exit 2 with the message (or raise it, for callers in Python)."""
        if not exit_on_error:
            raise e
        print(f"train.py: error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None

    try:
        argv, registered_paths = split_register_flags(argv)
        if lock is None:
            lock = take_run_lock(argv)  # before any building: a second run is refused at once
    except (ValueError, FolderLockedError) as e:
        refuse(e)
    try:
        try:
            register_classes(registered_paths)
            if args is None:  # train.py: LightningCLI reads sys.argv itself (less the --register flags)
                sys.argv[1:] = list(argv)
            cli = DiffusionCLI(args=None if args is None else argv, exit_on_error=exit_on_error)
        except (ValueError, FileNotFoundError, TypeError) as e:  # a bad value found while building: before any run
            refuse(e)
        cli.early_lock = lock
        cli.fit()
    except (FolderLockedError, CheckpointError) as e:
        refuse(e)
    finally:
        if lock is not None:
            lock.release()
    if cli.trainer.is_global_zero:
        rep = cli.report()
        print(f"checkpoint: {rep['checkpoint']}", flush=True)
        print(f"samples:    {rep['samples']}", flush=True)
    return cli


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
