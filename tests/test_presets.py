"""nasproxy.presets: a preset is an instance of settings; ``key=value`` overrides convert
to each field's type and a bad one is a one-line error."""

from __future__ import annotations

import dataclasses

import pytest

from nasproxy.errors import NasproxyError
from nasproxy.presets import PRESETS, Preset, parse_overrides
from nasproxy.scoring import ScoringConfig
from nasproxy.search import SearchSettings
from tests.test_settings import INTERNAL, _at, _field_paths


def test_overrides_convert_to_field_types() -> None:
    p = parse_overrides(
        PRESETS["demo"],
        ["epochs=3", "seeds=0,4", "sample=none", "whole=false", "archs=w32-*,w64-*"],
    )
    assert p.epochs == 3 and p.seeds == (0, 4) and p.sample is None and p.whole is False
    assert p.archs == ("w32-*", "w64-*")
    assert p.per_class == PRESETS["demo"].per_class


@pytest.mark.parametrize("bad", ["epochs", "nope=1", "epochs=three", "whole=maybe"])
def test_bad_overrides_are_one_line_errors(bad: str) -> None:
    with pytest.raises(NasproxyError):
        parse_overrides(PRESETS["demo"], [bad])


def _as_text(value: object) -> str:
    """A value as a ``--set`` item writes it (independently of the library's parsers)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(map(str, value)) + ("," if len(value) == 1 else "")
    return str(value)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_preset_is_an_instance_whose_values_survive_a_round_trip(name: str) -> None:
    preset = PRESETS[name]
    assert isinstance(preset, Preset) and isinstance(preset.search, SearchSettings)
    assert isinstance(preset.scoring, ScoringConfig)
    own = [f.name for f in dataclasses.fields(Preset) if f.name not in ("search", "scoring")]
    items = [f"{key}={_as_text(getattr(preset, key))}" for key in own]
    items += [
        f"{f.name}={_as_text(getattr(preset.scoring, f.name))}"
        for f in dataclasses.fields(ScoringConfig)
    ]
    items += [
        f"{p.split('.')[-1]}={_as_text(_at(preset.search, p))}"
        for p in _field_paths(SearchSettings)
        if f"train.{p.split('.')[-1]}" not in INTERNAL
    ]
    assert parse_overrides(Preset(), items) == preset
    # the old flat names read through (preset.epochs is its search's train.epochs)
    assert preset.epochs == preset.search.train.epochs and preset.rng == preset.search.fast.rng
