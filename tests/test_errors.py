"""nasproxy.errors.first_line: any exception as exactly one non-empty line."""

from __future__ import annotations

import pytest

from nasproxy.errors import first_line


@pytest.mark.parametrize(
    ("exc", "plain", "typed"),
    [
        (ValueError("bad value"), "bad value", "ValueError: bad value"),
        (ValueError(""), "ValueError", "ValueError"),  # an empty message: the type's name
        (ValueError("  \n\n"), "ValueError", "ValueError"),
        (RuntimeError("\n  first  \nsecond"), "first", "RuntimeError: first"),
        (KeyError("k"), "'k'", "KeyError: 'k'"),
        (SystemExit(3), "it called sys.exit(3)", "it called sys.exit(3)"),
        (SystemExit(), "it called sys.exit(None)", "it called sys.exit(None)"),
    ],
)
def test_an_exception_is_one_line(exc: BaseException, plain: str, typed: str) -> None:
    assert first_line(exc) == plain
    assert first_line(exc, with_type=True) == typed
