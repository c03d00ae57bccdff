"""The exception types for user mistakes and unfinished work, and the cache warning.

The CLI turns each error into a single line and exits with its ``exit_code`` (README.md,
"Exit codes"), so a script can tell a mistake from work that ran but left units to retry.
"""


class NasproxyError(Exception):
    """A problem the user can fix (bad input, missing file, mismatched dataset)."""

    exit_code = 2


class IncompleteError(NasproxyError):
    """The work ran, but some units failed or stayed unfinished; the same command retries them."""

    exit_code = 3


class CacheWarning(UserWarning):
    """A damaged cache entry was found and is being rebuilt (the result is unaffected)."""
