"""The one builder of objects described by data: checkpoints, configs, exported folders.

A checkpoint or a config is *data*: it may say which of a fixed set of classes to build and with which
plain arguments, never which function of the package (or of anything else) to call.  Every object
rebuilt from a description goes through :func:`build`, which

1. looks the name up in an explicit registry, per *kind* (``"sde"``, ``"loss"``, ``"net"``,
   ``"data"``), by its stable name (``"VP"``, ``"TimeMLP"``, ``"UNet2DModel"``...) or by one of the
   class paths that older checkpoints stored (``"lit_diffusion.sdes.VP"``, see :data:`FORMER_MODULES`);
2. checks every argument *before anything is called*: plain JSON types only (``None``, bools, numbers,
   strings, lists and string-keyed dicts of those), names accepted by the constructor, and values of the
   constructor's annotated type where the annotation is a plain one;
3. calls the constructor and checks that the result is an instance of the kind's base class.

Anything else raises :class:`UntrustedConfigError` naming the offending entry.  Checkpoints store the
stable names (:func:`describe`), so moving a module never breaks an old checkpoint.

Adding a class of your own (e.g. a custom network) is an explicit act in code::

    from lit_diffusion.training.registry import register
    register("net", "MyNet", MyNet)

Former module names: before the package was split into layer folders, every module lived at the top
(``lit_diffusion.sdes``).  :mod:`.former_names` holds the one table of those names; its ``current_path``
maps a class path written under one of them to its home now, for checkpoints (through the aliases
below) and for configs (``train.py`` rewrites them before parsing, with a warning).
"""

from __future__ import annotations

import inspect
import math
import sys
import types
import typing
from typing import Any, Callable, Optional

from .former_names import FORMER_MODULES

__all__ = [
    "UntrustedConfigError",
    "KINDS",
    "register",
    "registered",
    "resolve",
    "build",
    "check_description",
    "check_plain",
    "describe",
    "stable_name",
]


class UntrustedConfigError(ValueError):
    """A description (checkpoint hyper-parameters, config entry) that the registry refuses to build."""


# kind -> {stable name: class}; kind -> base-class loader; legacy path -> stable name
_REGISTRY: dict[str, dict[str, type]] = {}
_ALIASES: dict[str, dict[str, str]] = {}
_BASES: dict[str, Callable[[], type]] = {}
_LOADED = False


def _base_sde():
    from ..core.sdes import LinearSDE

    return LinearSDE


def _base_loss():
    from .losses import ScoreMatchingLoss

    return ScoreMatchingLoss


def _base_net():
    from torch import nn

    return nn.Module


def _base_data():
    from .data import BaseDataModule

    return BaseDataModule


_BASES.update(sde=_base_sde, loss=_base_loss, net=_base_net, data=_base_data)
KINDS = tuple(_BASES)


def _exports(module: str, cls: type) -> bool:
    """Whether the (already imported) ``module`` holds ``cls`` under its own name."""
    return getattr(sys.modules.get(module), cls.__qualname__, None) is cls


def register(kind: str, name: str, cls: type, aliases: tuple[str, ...] = ()) -> type:
    """Make ``cls`` buildable as ``kind`` under the stable ``name`` (and older ``aliases``)."""
    if kind not in _BASES:
        raise ValueError(f"register: unknown kind {kind!r}; valid kinds: {list(_BASES)}")
    if not isinstance(cls, type):
        raise TypeError(f"register: {cls!r} is not a class; only classes can be registered")
    if any(name in names for _, names, _ in _DEFERRED.get(kind, [])):
        _load_deferred(kind)  # a built-in name of another package: registered first, so the clash is said
    table = _REGISTRY.setdefault(kind, {})
    if name in table and table[name] is not cls:
        raise ValueError(f"register: {kind} name {name!r} is already taken by {table[name].__qualname__}")
    table[name] = cls
    names = _ALIASES.setdefault(kind, {})
    paths = (f"{cls.__module__}.{cls.__qualname__}",)
    if cls.__module__.startswith("lit_diffusion."):
        paths += (f"lit_diffusion.{cls.__qualname__}",)  # the package-level export jsonargparse may print
        paths += tuple(f"{old}.{cls.__qualname__}" for old, homes in FORMER_MODULES.items()
                       if any(_exports(home, cls) for home in homes))
    for a in paths + tuple(aliases):
        names[a] = name
    return cls


def _load_builtins() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    from ..core import sdes
    from . import data, losses, networks
    from ..core.discrete_vp import DiscreteVP

    for n, c in sdes.SDE_CLASSES.items():  # defined by family (core.sde_vp...), imported from the list core.sdes
        register("sde", n, c, aliases=(f"{sdes.__name__}.{n}",))
    register("sde", "DiscreteVP", DiscreteVP)
    for c in (losses.DSM, losses.SSM, losses.ISM, losses.ESM):
        register("loss", c.__name__, c)
    for c in (networks.TimeMLP, networks.UNet):
        register("net", c.__name__, c)
    from . import image_data

    for module in (data, image_data):
        for n in module.__all__:
            c = getattr(module, n)
            if isinstance(c, type) and issubclass(c, data.BaseDataModule) and n not in ("BaseDataModule", "TensorDataModule"):
                register("data", n, c)


def _unet2d() -> None:
    from diffusers import UNet2DModel

    register("net", "UNet2DModel", UNet2DModel, aliases=("diffusers.UNet2DModel", "diffusers.models.UNet2DModel"))


#: built-in classes of other packages, registered when first needed (diffusers' import costs more than
#: a second at every train.py start that never builds one): kind -> [(module prefix, names, loader)]
_DEFERRED: dict[str, list] = {"net": [("diffusers", ("UNet2DModel",), _unet2d)]}


def _load_deferred(kind: str) -> None:
    for _prefix, _names, load in _DEFERRED.pop(kind, []):
        load()


def registered(kind: str) -> dict[str, type]:
    """The classes buildable as ``kind`` (stable name -> class)."""
    _check_kind(kind)
    _load_builtins()
    _load_deferred(kind)
    return dict(_REGISTRY.get(kind, {}))


def _check_kind(kind: str) -> None:
    if kind not in _BASES:
        raise ValueError(f"unknown kind {kind!r}; valid kinds: {list(_BASES)}")


def resolve(kind: str, name: str, where: str = "") -> type:
    """The class registered as ``kind`` under ``name`` (stable name or a known class path)."""
    _check_kind(kind)
    _load_builtins()
    table = _REGISTRY.get(kind, {})
    if not isinstance(name, str):
        raise UntrustedConfigError(f"{where or kind}: class_path must be a string; got {type(name).__name__}")
    key = _lookup(kind, name)
    if key not in table and kind in _DEFERRED:
        _load_deferred(kind)
        table, key = _REGISTRY.get(kind, {}), _lookup(kind, name)
    if key not in table:
        raise UntrustedConfigError(
            f"{where or kind}: {name!r} is not a registered {kind} class, so this checkpoint/config is not trusted "
            f"and nothing was built; valid choices: {sorted(table)} (add your own with lit_diffusion.training.registry.register)"
        )
    return table[key]


def _lookup(kind: str, name: str) -> str:
    """The stable name ``name`` stands for (an alias, a case-insensitive stable name), or ``name``."""
    table = _REGISTRY.get(kind, {})
    key = _ALIASES.get(kind, {}).get(name, name)
    if key not in table:
        # case-insensitive stable names ("vp", "dsm", "timemlp")
        low = {k.lower(): k for k in table}
        key = low.get(name.lower(), key)
    return key


def stable_name(kind: str, cls: type) -> Optional[str]:
    """The registered name of ``cls`` for ``kind``, or None."""
    _check_kind(kind)
    _load_builtins()
    if any(str(cls.__module__).startswith(prefix) for prefix, _, _ in _DEFERRED.get(kind, [])):
        _load_deferred(kind)
    for n, c in _REGISTRY.get(kind, {}).items():
        if c is cls:
            return n
    return None


# ------------------------------------------------------------------------------------------------
# argument checks
# ------------------------------------------------------------------------------------------------
def check_plain(value: Any, where: str) -> Any:
    """``value`` if it is made of JSON types (tuples count as lists), else :class:`UntrustedConfigError`."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_plain(v, f"{where}[{i}]")
        return value
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise UntrustedConfigError(f"{where}: dictionary key {k!r} is not a string; only JSON data is accepted")
            check_plain(v, f"{where}.{k}")
        return value
    raise UntrustedConfigError(
        f"{where}: a value of type {type(value).__module__}.{type(value).__qualname__} is not plain JSON data "
        "(numbers, strings, bools, lists, dicts); the checkpoint/config is not trusted and nothing was built"
    )


def _matches(value: Any, ann: Any) -> bool:
    """Whether a JSON ``value`` fits a (plain) annotation; unknown annotations accept anything."""
    if ann is inspect.Parameter.empty or ann is Any:
        return True
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if origin is typing.Union or origin is types.UnionType:
        return any(_matches(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if ann is type(None):
        return value is None
    if ann is bool:
        return isinstance(value, bool)
    if ann is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if ann is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if ann is str:
        return isinstance(value, str)
    if origin in (list, tuple, typing.Sequence) or ann in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        inner = [a for a in args if a is not Ellipsis]
        if len(inner) == 1:
            return all(_matches(v, inner[0]) for v in value)
        if inner and len(inner) == len(value) and Ellipsis not in args:
            return all(_matches(v, a) for v, a in zip(value, inner))
        return True
    if origin is dict or ann is dict:
        return isinstance(value, dict)
    return True  # other annotations (classes, tensors...): only plain JSON reaches here anyway


def _signature(cls: type):
    try:
        sig = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        return None, {}
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - unresolved forward references: fall back to raw annotations
        hints = {}
    return sig, hints


def _check_args(cls: type, kind: str, args: dict, where: str) -> None:
    sig, hints = _signature(cls)
    if sig is None:
        return
    params = {n: p for n, p in list(sig.parameters.items())[1:] if p.kind not in (p.VAR_POSITIONAL,)}
    var_kw = any(p.kind == p.VAR_KEYWORD for p in params.values())
    named = {n: p for n, p in params.items() if p.kind != p.VAR_KEYWORD}
    for k, v in args.items():
        if k not in named:
            if var_kw and kind != "sde":
                continue
            raise UntrustedConfigError(
                f"{where}: {cls.__name__} has no argument {k!r}; valid arguments: {sorted(named)}"
            )
        ann = hints.get(k, named[k].annotation)
        if isinstance(ann, str):
            continue
        if not _matches(v, ann):
            raise UntrustedConfigError(
                f"{where}.{k}: {v!r} does not fit the type {getattr(ann, '__name__', ann)} of {cls.__name__}({k}=...)"
            )
        if isinstance(v, float) and not math.isfinite(v) and kind == "sde":
            raise UntrustedConfigError(f"{where}.{k}: {v!r} is not a finite number")


def check_description(cfg: Any, kind: str, where: Optional[str] = None) -> tuple[type, dict]:
    """Validate a ``{"class_path", "init_args"}`` description (or a bare name) without building it:
    returns ``(class, init_args)`` or raises :class:`UntrustedConfigError`."""
    where = where or kind
    if isinstance(cfg, str):
        cfg = {"class_path": cfg, "init_args": {}}
    if not isinstance(cfg, dict) or "class_path" not in cfg:
        raise UntrustedConfigError(f"{where}: expected a {{'class_path', 'init_args'}} description or a registered name; got {type(cfg).__name__}")
    extra = sorted(set(cfg) - {"class_path", "init_args", "dict_kwargs"})
    if extra:
        raise UntrustedConfigError(f"{where}: unexpected keys {extra}; a description has 'class_path' and 'init_args'")
    cls = resolve(kind, cfg["class_path"], where)
    args = cfg.get("init_args") or {}
    if cfg.get("dict_kwargs"):
        args = {**dict(args), **dict(cfg["dict_kwargs"])}
    if not isinstance(args, dict):
        raise UntrustedConfigError(f"{where}.init_args: expected a dictionary; got {type(args).__name__}")
    check_plain(args, f"{where}.init_args")
    _check_args(cls, kind, args, f"{where}.init_args")
    return cls, dict(args)


def build(cfg: Any, kind: str, where: Optional[str] = None):
    """Build a registered object from its description (everything is checked before the call)."""
    cls, args = check_description(cfg, kind, where)
    obj = cls(**{k: (list(v) if isinstance(v, tuple) else v) for k, v in args.items()})
    base = _BASES[kind]()
    if not isinstance(obj, base):  # pragma: no cover - registered classes are subclasses by construction
        raise UntrustedConfigError(f"{where or kind}: built a {type(obj).__name__}, not a {base.__name__}")
    return obj


# ------------------------------------------------------------------------------------------------
# descriptions
# ------------------------------------------------------------------------------------------------
_NOT_PLAIN = object()


def _plain(v):
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        out = [_plain(u) for u in v]
        return _NOT_PLAIN if any(o is _NOT_PLAIN for o in out) else out
    if isinstance(v, dict):
        out = {str(k): _plain(u) for k, u in v.items()}
        return _NOT_PLAIN if any(o is _NOT_PLAIN for o in out.values()) else out
    return _NOT_PLAIN


def _constructor_args(obj) -> dict:
    from torch import nn

    cfg = getattr(obj, "config", None)
    hp = getattr(obj, "hparams", None)
    if cfg is not None and hasattr(cfg, "items") and not callable(cfg):
        return {k: v for k, v in dict(cfg).items() if not str(k).startswith("_")}
    if callable(hp) and not isinstance(obj, nn.Module):
        return dict(hp())
    args: dict = {}
    for klass in type(obj).__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for name in list(inspect.signature(init).parameters)[1:]:
            if name not in args and name not in ("args", "kwargs") and hasattr(obj, name):
                args[name] = getattr(obj, name)
    return args


def describe(obj, kind: Optional[str] = None) -> Any:
    """A plain ``{"class_path": <stable name>, "init_args": {...}}`` description of ``obj`` (values that
    are not JSON data are left out).  Unregistered classes keep their full class path, which
    :func:`build` then refuses until the class is registered."""
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    cls = type(obj)
    name = None
    for k in ([kind] if kind else list(_BASES)):
        name = stable_name(k, cls)
        if name is not None:
            break
    path = name or f"{cls.__module__}.{cls.__qualname__}"
    args = {}
    for k, v in _constructor_args(obj).items():
        p = _plain(v)
        if p is not _NOT_PLAIN:
            args[k] = p
    return {"class_path": path, "init_args": args}
