"""Config files and class-naming flags of ``train.py`` and the Accelerate launcher, checked before
jsonargparse reads them: text within the size and YAML-alias bounds, ``model.sde/loss/net`` and
``data`` naming registered classes with arguments they accept, other class paths inside the trusted
packages or registered with ``--register``, and the package's former module names translated
(:data:`lit_diffusion.training.former_names.FORMER_MODULES`)."""

from __future__ import annotations

import os
from typing import Optional


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
    from ..training.former_names import current_path

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
    :data:`lit_diffusion.training.former_names.FORMER_MODULES`) replaced by their homes now, in config
    files (passed on as YAML text) and on the command line, said once in a warning; ``args`` itself
    when nothing names a former module."""
    import warnings

    import yaml

    from ..training.former_names import current_path

    if args is None or isinstance(args, dict):
        return args
    given, args, said, out = args, [str(a) for a in args], [], []
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
    if not said:
        return given
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
