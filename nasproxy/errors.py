"""The one exception type for user mistakes; the CLI turns it into a single line."""


class NasproxyError(Exception):
    """A problem the user can fix (bad input, missing file, mismatched dataset)."""
