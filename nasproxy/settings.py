"""Settings declared once, as fields of frozen dataclasses: their command-line flags, their
``key=value`` overrides and the parsing of their values all come from the field.

A field made with ``setting(default, help=...)`` is a setting. Its key is the field's name
(``trial_size``), its flag ``--trial-size`` unless ``flag=`` names another, and its value is
read from text by its type (one parser a type: ``int``, ``float``, ``str``, ``bool``,
``X | None`` with ``none``, ``tuple[X, ...]`` as a comma list or a repeated flag) or by the
field's own ``parse=``. A field whose type is itself a dataclass (``SearchConfig.train``)
contributes its fields under their own names, so the keys of a tree of settings are flat
and must be unique. Fields marked ``internal=True`` (or made without ``setting``) get no
flag and no key. How users set them: docs/search.md, "Presets of nasproxy run".

Every value is checked in one place, ``check_fields``, which each settings dataclass calls
from its ``__post_init__``: so a flag, a ``--set`` item, a preset and a Python caller get
the same refusal. It checks the type, the field's ``check=`` (``at_least(1)``, ...; for a
tuple, each item), ``choices``, and by type: a float is finite, a str (unless optional) and
a tuple declared ``nonempty`` are not empty. A refusal is a ``SettingError``, which names
settings by key until the command that read them names them as its user wrote them.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import numbers
import os
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import MISSING
from typing import Any, TypeVar

from nasproxy.errors import NasproxyError

T = TypeVar("T")
TRUE = ("true", "1", "yes")
FALSE = ("false", "0", "no")
_REF = re.compile("\x00([a-z_0-9]+)\x00")


def ref(key: str) -> str:
    """The setting ``key`` inside a ``SettingError``'s message, named when it is shown."""
    return f"\x00{key}\x00"


class SettingError(NasproxyError):
    """A setting's value, or a combination of settings, refused. Its message refers to
    settings with ``ref(key)``; each shows as its key (``whole_top``, as ``run --set`` and
    Python callers write it) unless ``named`` gives another name (``--whole-top``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.names: dict[str, str] = {}

    def named(self, names: Mapping[str, str]) -> SettingError:
        """This error, its settings shown by ``names`` where given (else by key)."""
        self.names = {**self.names, **names}
        return self

    def __str__(self) -> str:
        return _REF.sub(lambda m: self.names.get(m[1], m[1]), str(self.args[0]))


@dataclasses.dataclass(frozen=True)
class Check:
    """A constraint on a setting's value (on each item of a tuple): ``holds`` tells whether
    a value meets it, ``want`` says what it wants ("at least 1")."""

    holds: Callable[[Any], bool]
    want: str


def at_least(low: float) -> Check:
    """A number of at least ``low``."""
    return Check(lambda v: v >= low, f"at least {low:g}")


def above(low: float) -> Check:
    """A number greater than ``low``."""
    return Check(lambda v: v > low, f"greater than {low:g}")


def within(low: float, high: float, *, low_open: bool, high_open: bool) -> Check:
    """A number between ``low`` and ``high``, each bound open or closed, e.g. [0, 1)."""

    def holds(v: float) -> bool:
        return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)

    return Check(holds, f"in {'(['[not low_open]}{low:g}, {high:g}{')]'[not high_open]}")


# a seed: what numpy's and torch's generators all take (no negatives; 32 bits)
SEED = Check(lambda v: 0 <= v < 2**32, "from 0 to 2**32 - 1")


def setting(
    default: Any = MISSING,
    *,
    help: str,
    flag: str | None = None,
    metavar: str | None = None,
    choices: Sequence[str] | None = None,
    parse: Callable[[str], Any] | None = None,
    check: Check | None = None,
    nonempty: bool = False,
    repeat: bool = False,
    default_text: str | None = None,
    internal: bool = False,
    kw_only: bool = False,
) -> Any:
    """A dataclass field that is a setting (module docstring): ``check`` constrains its value
    (each item of a tuple), ``nonempty`` refuses an empty tuple; ``repeat`` makes a tuple's
    flag repeatable (one item each time); ``flag="--no-X"`` makes a bool's flag set it
    False; ``default_text`` is how --help shows the default."""
    metadata = {
        "check": check,
        "nonempty": nonempty,
        "help": help,
        "flag": flag,
        "metavar": metavar,
        "choices": tuple(choices) if choices is not None else None,
        "parse": parse,
        "repeat": repeat,
        "default_text": default_text,
        "internal": internal,
    }
    return dataclasses.field(default=default, metadata=metadata, kw_only=kw_only)


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One setting of a tree of dataclasses: where it sits, its field and its type."""

    path: tuple[str, ...]  # field names from the root to this setting
    field: dataclasses.Field
    hint: Any

    @property
    def key(self) -> str:
        return self.path[-1]

    @property
    def flag(self) -> str:
        return self.field.metadata.get("flag") or "--" + self.key.replace("_", "-")


@functools.cache
def leaves(cls: type) -> dict[str, Leaf]:
    """Every setting of ``cls`` and of the dataclasses its fields hold, by key (not internal
    ones). Two settings with one key are a programming error."""
    found: dict[str, Leaf] = {}
    for leaf in _walk(cls, ()):
        if leaf.key in found:
            raise TypeError(f"setting {leaf.key!r} appears twice in {cls.__name__}")
        found[leaf.key] = leaf
    return found


def _walk(cls: type, prefix: tuple[str, ...]) -> Iterable[Leaf]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from _walk(hint, (*prefix, f.name))
        elif "help" in f.metadata and not f.metadata["internal"]:
            yield Leaf((*prefix, f.name), f, hint)


def add_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    keys: Iterable[str] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """One flag per setting of ``cls`` (or of those named in ``keys``), in field order.

    Flags keep their values as text (None when not given); ``from_flags`` parses them with
    the same parsers as ``key=value`` overrides, so both mean the same. ``defaults`` gives a
    command its own default for some settings (shown in --help, used when not given)."""
    wanted = None if keys is None else set(keys)
    defaults = dict(defaults or {})
    for key, leaf in leaves(cls).items():
        if wanted is not None and key not in wanted:
            continue
        meta = leaf.field.metadata
        default = defaults.get(key, leaf.field.default)
        kwargs: dict[str, Any] = {"dest": key, "default": None, "help": _help(leaf, default)}
        base = _strip_optional(leaf.hint)
        if base is bool:
            if leaf.flag.startswith("--no-"):
                kwargs.update(action="store_const", const=False)
            elif _is_optional(leaf.hint):
                kwargs["action"] = argparse.BooleanOptionalAction
            else:
                kwargs.update(action="store_const", const=True)
        else:
            if meta["repeat"]:
                kwargs["action"] = "append"
            if meta["choices"] is not None:  # shown as argparse does; refused by check_fields
                kwargs["metavar"] = "{" + ",".join(meta["choices"]) + "}"
            if meta["metavar"] is not None:
                kwargs["metavar"] = meta["metavar"]
            if leaf.field.default is MISSING and _outermost(leaf):
                kwargs["required"] = True
        parser.add_argument(leaf.flag, **kwargs)
    parser.set_defaults(**{key: str(value) for key, value in defaults.items()})


def _outermost(leaf: Leaf) -> bool:
    return len(leaf.path) == 1


def _help(leaf: Leaf, default: Any) -> str:
    meta = leaf.field.metadata
    text = meta["help"]
    if "default" in text or _strip_optional(leaf.hint) is bool:
        return text  # a bool's flag says what it does; its default is the other way
    shown = meta["default_text"] if default is leaf.field.default else None
    if shown is None and default is not MISSING and not _empty(default):
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else str(default)
    return f"{text} (default {shown})" if shown else text


def _empty(default: Any) -> bool:
    return default is None or default is False or default == ()


def given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The flags of ``cls``'s settings that were given, by key (as text or bool)."""
    return {key: getattr(args, key) for key in leaves(cls) if getattr(args, key, None) is not None}


def from_flags(cls: type[T], args: argparse.Namespace, **fixed: Any) -> T:
    """A ``cls`` from the flags ``add_flags`` made (the given ones over the defaults), with
    ``fixed`` settings (parsed values) on top. A refusal names the settings by their flags."""
    try:
        return build(cls, {**parse_values(cls, given(args, cls)), **fixed})
    except SettingError as exc:
        raise exc.named(flag_names(cls)) from None


def flag_names(cls: type) -> dict[str, str]:
    """The flag of every setting of ``cls``, by key (``whole_by``: ``--by``)."""
    return {key: leaf.flag for key, leaf in leaves(cls).items()}


def parse_values(cls: type, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Settings of ``cls`` from text (or a flag's list or bool), each by its own parser."""
    known = leaves(cls)
    return {key: parse_value(known[key], value) for key, value in raw.items()}


def parse_overrides(cls: type, items: Sequence[str]) -> dict[str, Any]:
    """``key=value`` strings as parsed settings of ``cls``; a key may be written with ``-``."""
    known = leaves(cls)
    raw: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in known:
            raise NasproxyError(
                f"bad override {item!r}: use key=value with a key among {', '.join(known)}"
            )
        raw[key] = value.strip()
    return parse_values(cls, raw)


def parse_value(leaf: Leaf, raw: Any) -> Any:
    """One setting's value from text: by the field's ``parse``, else by its type."""
    parse = leaf.field.metadata["parse"]
    try:
        if parse is not None and isinstance(raw, str):
            return parse(raw)
        return _by_type(leaf.hint, raw)
    except ValueError:
        raise SettingError(
            f"bad value {raw!r} for {ref(leaf.key)}: want {_want(leaf.hint)}"
        ) from None


def _want(hint: Any) -> str:
    """What text a setting of type ``hint`` reads, in words."""
    if _is_optional(hint):
        return f"{_want(_strip_optional(hint))} or none"
    if typing.get_origin(hint) is tuple:
        return f"a comma list, each {_want(typing.get_args(hint)[0])}"
    return _KIND_WORDS.get(hint, str(hint))


def _by_type(hint: Any, raw: Any) -> Any:
    if not isinstance(raw, str | list):
        return raw  # a flag's bool: already a value
    if _is_optional(hint):
        if isinstance(raw, str) and raw.strip().lower() in ("none", ""):
            return None
        hint = _strip_optional(hint)
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        items = raw if isinstance(raw, list) else [v for v in raw.split(",") if v.strip()]
        return tuple(_by_type(item, v.strip()) for v in items)
    text = raw.strip()
    if hint is bool:
        if text.lower() not in TRUE + FALSE:
            raise ValueError(text)
        return text.lower() in TRUE
    if hint in (int, float, str):
        return hint(text)
    raise TypeError(f"no parser for settings of type {hint!r}")


def _is_optional(hint: Any) -> bool:
    return isinstance(hint, types.UnionType) and type(None) in hint.__args__


def _strip_optional(hint: Any) -> Any:
    if _is_optional(hint):
        return next(a for a in hint.__args__ if a is not type(None))
    return hint


def build(cls: type[T], values: Mapping[str, Any], base: Any = None) -> T:
    """A ``cls`` with ``values`` (parsed settings by key, of any depth) over ``base``'s
    values, or over the field defaults where ``base`` is None."""
    return _assemble(cls, dict(values), base)


def replace_settings(obj: T, values: Mapping[str, Any]) -> T:
    """``obj`` with some of its settings (by key, of any depth) changed."""
    unknown = set(values) - set(leaves(type(obj)))
    if unknown:
        raise NasproxyError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    return build(type(obj), values, obj)


def _assemble(cls: type, values: dict[str, Any], base: Any) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        current = getattr(base, f.name) if base is not None else None
        if dataclasses.is_dataclass(hint):
            if current is None:
                current = f.default if f.default is not MISSING else hint()
            kwargs[f.name] = _assemble(hint, values, current)
        elif f.name in values:
            kwargs[f.name] = values[f.name]
        elif base is not None:
            kwargs[f.name] = current
    return cls(**kwargs)


def get(obj: Any, key: str) -> Any:
    """The value of the setting ``key`` of ``obj``, at whatever depth it sits."""
    leaf = leaves(type(obj))[key]
    for name in leaf.path:
        obj = getattr(obj, name)
    return obj


def check_fields(obj: Any) -> None:
    """Refuse, as one ``SettingError``, a setting of ``obj`` (its own fields; a nested
    dataclass checks its own) whose value breaks its declaration (module docstring)."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        hint = hints[f.name]
        if "help" in f.metadata and not dataclasses.is_dataclass(hint):
            _check(f, hint, getattr(obj, f.name))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)  # once a class: settings are made per unit


def _check(f: dataclasses.Field, hint: Any, value: Any) -> None:
    meta, name = f.metadata, ref(f.name)
    if value is None and _is_optional(hint):
        return
    base = _strip_optional(hint)
    if typing.get_origin(base) is tuple:
        if not isinstance(value, tuple | list):
            raise SettingError(f"{name} must be a list, got {value!r}")
        if meta["nonempty"] and not value:
            raise SettingError(f"{name} needs at least one item, got none")
        for item in value:
            _check_one(meta, typing.get_args(base)[0], item, f"{name} items")
    else:
        _check_one(meta, base, value, name)


def _check_one(meta: Mapping[str, Any], kind: Any, value: Any, name: str) -> None:
    if not _fits(kind, value):
        raise SettingError(f"{name} must be {_KIND_WORDS.get(kind, kind)}, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise SettingError(f"{name} must be a finite number, got {value!r}")
    if kind is str and not str(value).strip():
        raise SettingError(f"{name} must not be empty")
    choices = meta["choices"]
    if choices is not None and value not in choices:
        raise SettingError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    check = meta["check"]
    if check is not None and not check.holds(value):
        raise SettingError(f"{name} must be {check.want}, got {value!r}")


_KIND_WORDS = {int: "an integer", float: "a number", str: "text", bool: "true or false"}


def _fits(kind: Any, value: Any) -> bool:
    if isinstance(value, bool) or kind is bool:
        return kind is bool and isinstance(value, bool)
    if kind is int:
        return isinstance(value, numbers.Integral)
    if kind is float:
        return isinstance(value, numbers.Real)
    if kind is str:
        return isinstance(value, str | os.PathLike)  # a folder may be given as a Path
    return isinstance(value, kind)
