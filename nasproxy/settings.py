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
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import MISSING
from typing import Any, TypeVar

from nasproxy.errors import NasproxyError

T = TypeVar("T")
TRUE = ("true", "1", "yes")
FALSE = ("false", "0", "no")


def setting(
    default: Any = MISSING,
    *,
    help: str,
    flag: str | None = None,
    metavar: str | None = None,
    choices: Sequence[str] | None = None,
    parse: Callable[[str], Any] | None = None,
    repeat: bool = False,
    default_text: str | None = None,
    internal: bool = False,
    kw_only: bool = False,
) -> Any:
    """A dataclass field that is a setting (module docstring): ``repeat`` makes a tuple's flag
    repeatable (one item each time); ``flag="--no-X"`` makes a bool's flag set it False;
    ``default_text`` is how --help shows the default."""
    metadata = {
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
            if meta["choices"] is not None:
                kwargs["choices"] = meta["choices"]
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
    ``fixed`` settings (parsed values) on top."""
    return build(cls, {**parse_values(cls, given(args, cls)), **fixed})


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
        raise NasproxyError(f"bad value {raw!r} for {leaf.key}") from None


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
