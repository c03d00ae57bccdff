"""Where a proxy method comes from: a built-in name, an installed plug-in, or MODULE:FUNCTION.

Built-in methods are named here as ``module:function`` strings and imported only when
used. Installed packages register theirs under the entry-point group ``nasproxy.methods``
(``name = "package.module:function"``, read with ``importlib.metadata``); a built-in name
wins over a plug-in of the same name. Any other ``MODULE:FUNCTION`` (or
``path/to/file.py:FUNCTION``) is imported as given. A plug-in has the built-in contract:
it receives the ``SelectionContext`` and returns the kept train-split indices.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from nasproxy.errors import NasproxyError, first_line
from nasproxy.proxies.base import Select
from nasproxy.results import NAME_PATTERN

ENTRY_POINT_GROUP = "nasproxy.methods"

BUILTIN: dict[str, str] = {
    "influence": "nasproxy.proxies.influence:select",
    "random": "nasproxy.proxies.random:select",
    "herding": "nasproxy.proxies.herding:select",
    "forgetting": "nasproxy.proxies.forgetting:select",
    "el2n": "nasproxy.proxies.el2n:select",
    "grand": "nasproxy.proxies.grand:select",
    "kcenter": "nasproxy.proxies.kcenter:select",
    "ccs": "nasproxy.proxies.ccs:select",
    "entropy": "nasproxy.proxies.entropy:select",
}


@dataclass(frozen=True)
class Method:
    """A resolved method: its name (as recorded in the proxy file), where it comes from,
    the selector, whether it is one of nasproxy's own, and whether it has no randomness
    (the same selection whatever the seed and the scoring run: one draw, ``proxies.draws``).
    A plug-in says so by setting ``deterministic = True`` on its function."""

    name: str
    source: str  # "module:function", with the distribution for an installed plug-in
    select: Select
    builtin: bool
    deterministic: bool = False


def plugin_names() -> dict[str, importlib.metadata.EntryPoint]:
    """The installed plug-ins, by name (built-in names excluded)."""
    points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    return {ep.name: ep for ep in points if ep.name not in BUILTIN}


def method_names() -> list[str]:
    """Every method usable by name: the built-ins, then the installed plug-ins."""
    return [*BUILTIN, *sorted(plugin_names())]


# What user code may raise that ``except Exception`` misses: sys.exit() and a
# KeyboardInterrupt of its own; either must end in one line naming the method, not a
# silent exit.
ESCAPES = (Exception, SystemExit, KeyboardInterrupt)


def source(spec: str) -> str | None:
    """Where an installed plug-in comes from, with its distribution's version (recorded in
    a proxy file, so an upgraded plug-in is told apart); None for any other method."""
    ep = plugin_names().get(spec) if spec not in BUILTIN else None
    if ep is None:
        return None
    dist = f" ({ep.dist.name} {ep.dist.version})" if ep.dist is not None else ""
    return f"{ep.value}{dist}"


def check_method_name(name: str) -> str:
    """``name`` if it can name a proxy file and a training set, else one line."""
    if not NAME_PATTERN.fullmatch(name):
        raise NasproxyError(
            f"method name {name!r} cannot name a proxy file or a training set (use letters, "
            "digits, '.', '_' and '-', not a path)"
        )
    return name


def resolve(spec: str) -> Method:
    """The method for ``spec``, imported now; one line naming it when it cannot be."""
    if spec in BUILTIN:
        return Method(spec, BUILTIN[spec], _import(BUILTIN[spec], spec), True)
    plugins = plugin_names()
    if spec in plugins:
        ep = plugins[spec]
        where = source(spec)
        try:
            func = ep.load()
        except ESCAPES as exc:  # a broken plug-in must not end in a traceback, nor silently
            raise NasproxyError(
                f"method {spec!r}: cannot load {where} ({first_line(exc, with_type=True)})"
            ) from None
        select = _callable(func, spec)
        return Method(spec, str(where), select, False, _declared_deterministic(select))
    if ":" in spec:
        select = _import(spec, spec)
        return Method(spec, spec, select, False, _declared_deterministic(select))
    raise NasproxyError(
        f"unknown proxy method {spec!r}; choose from {', '.join(method_names())}, "
        "or give MODULE:FUNCTION"
    )


def _import(target: str, spec: str) -> Select:
    module_name, _, attr = target.rpartition(":")
    if not module_name or not attr:
        raise NasproxyError(f"method {spec!r}: expected MODULE:FUNCTION")
    try:
        if module_name.endswith(".py"):
            module = _load_file(Path(module_name), spec)
        else:
            module = importlib.import_module(module_name)
    except NasproxyError:
        raise
    except ESCAPES as exc:  # the user's module may raise anything while importing
        raise NasproxyError(
            f"method {spec!r}: cannot import {module_name} ({first_line(exc, with_type=True)})"
        ) from None
    func = getattr(module, attr, None)
    if func is None:
        raise NasproxyError(f"method {spec!r}: {module_name} has no {attr!r}")
    return _callable(func, spec)


def _load_file(path: Path, spec: str):
    if not path.is_file():
        raise NasproxyError(f"method {spec!r}: no file {path}")
    name = f"nasproxy_method_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise NasproxyError(f"method {spec!r}: {path} is not a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # so that the module's own dataclasses and pickling work
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _declared_deterministic(func: Select) -> bool:
    """Whether a plug-in's function declares that it has no randomness."""
    return getattr(func, "deterministic", False) is True


def _callable(func: object, spec: str) -> Select:
    if not callable(func):
        raise NasproxyError(f"method {spec!r} is not a function")
    return func  # type: ignore[return-value]
