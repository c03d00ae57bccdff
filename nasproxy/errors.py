"""The exception types for user mistakes and unfinished work, the warnings, and
``first_line``, an exception as one line.

The CLI turns each error into a single line and exits with its ``exit_code``
(docs/running.md, "Exit codes"), so a script can tell a mistake from work that ran but
left units to retry.
"""


class NasproxyError(Exception):
    """A problem the user can fix (bad input, missing file, mismatched dataset)."""

    exit_code = 2


class IncompleteError(NasproxyError):
    """The work ran, but some units failed or stayed unfinished; the same command retries them."""

    exit_code = 3


class NasproxyWarning(UserWarning):
    """A warning the CLI prints as one line."""


class CacheWarning(NasproxyWarning):
    """A damaged cache entry was found and is being rebuilt (the result is unaffected)."""


class DataWarning(NasproxyWarning):
    """Images were converted or skipped as they were decoded (one line says which)."""


def first_line(exc: BaseException, with_type: bool = False) -> str:
    """An exception as one line: its message's first non-blank line, else its type's name.

    With ``with_type``, ``Type: first line``. Reasons in result rows and error lines use it,
    so an empty or multi-line message never breaks (or spreads over) one line. A
    ``SystemExit`` (user code that called ``sys.exit``) says so, with its code.
    """
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({exc.code!r})"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    name = type(exc).__name__
    if not lines:
        return name
    return f"{name}: {lines[0]}" if with_type else lines[0]
