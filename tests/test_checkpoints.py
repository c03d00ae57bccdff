"""The checkpoint setting: its epochs (closed form), its text forms and its refusals."""

from __future__ import annotations

import math
import subprocess
import sys
from fractions import Fraction

import pytest

from nasproxy import settings
from nasproxy.checkpoints import checkpoint_epochs, parse_checkpoints
from nasproxy.errors import NasproxyError
from nasproxy.search import SearchSettings
from nasproxy.settings import SettingError
from nasproxy.train import TrainConfig


def _nearest_half_up(x: Fraction) -> int:
    """x rounded to the nearest integer, halves up, in exact arithmetic."""
    return math.floor(x + Fraction(1, 2))


@pytest.mark.parametrize(
    "epochs,want",
    [(100, [4, 11, 33, 100]), (10, [1, 3, 10]), (27, [1, 3, 9, 27]), (1, [1]), (2, [1, 2])],
)
def test_the_default_is_e_over_27_9_3_and_e(epochs: int, want: list[int]) -> None:
    assert TrainConfig().checkpoints == "4"
    assert checkpoint_epochs(TrainConfig().checkpoints, epochs) == want


@pytest.mark.parametrize("count", [1, 2, 3, 5, 40])
def test_a_count_is_e_over_powers_of_3_rounded_at_least_1_without_repeats(count: int) -> None:
    for epochs in range(1, 300):
        want = sorted({max(1, _nearest_half_up(Fraction(epochs, 3**j))) for j in range(count)})
        assert checkpoint_epochs(str(count), epochs) == want, epochs


def test_a_list_keeps_its_epochs_up_to_e_and_adds_e() -> None:
    assert checkpoint_epochs("30,10,100", 100) == [10, 30, 100]
    assert checkpoint_epochs("10,30,", 100) == [10, 30, 100]
    assert checkpoint_epochs("5,", 20) == [5, 20]
    assert checkpoint_epochs("10,30,100", 20) == [10, 20]  # a set with fewer epochs
    assert checkpoint_epochs("none", 100) == []


@pytest.mark.parametrize(
    "text,want",
    [("4", "4"), (" 04 ", "4"), ("None", "none"), ("30,10", "10,30,"), ("5,", "5,")],
)
def test_text_is_read_into_one_canonical_form(text: str, want: str) -> None:
    assert parse_checkpoints(text) == want
    parsed = settings.parse_overrides(TrainConfig, [f"checkpoints={text}"])
    assert TrainConfig(**parsed).checkpoints == want


@pytest.mark.parametrize("text", ["0", "-1", "1.5", "x", ",", "", "3,3", "0,5", "4,,5", "1e2"])
def test_bad_values_are_refused_in_one_line(text: str) -> None:
    with pytest.raises(SettingError) as err:
        parse_checkpoints(text)
    assert "\n" not in str(err.value) and "checkpoints" in str(err.value)
    with pytest.raises(NasproxyError):
        TrainConfig(checkpoints=text)


def test_a_repeated_epoch_is_named() -> None:
    with pytest.raises(SettingError, match="epoch 3 is repeated"):
        parse_checkpoints("3,9,3")


def test_the_search_and_run_take_the_setting_by_its_key() -> None:
    cfg = settings.build(
        SearchSettings, settings.parse_overrides(SearchSettings, ["checkpoints=none"])
    )
    assert cfg.train.checkpoints == "none"


@pytest.mark.parametrize("value", ["0", "3,3"])
def test_the_command_refuses_a_bad_value_in_one_line_exit_2(value: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "nasproxy.cli", "train", "--arch", "w8-d1-relu-none-none",
         "--epochs", "1", "--checkpoints", value],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1
    assert "--checkpoints" in done.stderr
