"""Kept for one version: ``nasproxy units`` is this command now (library: ``nasproxy.units``).

    python scripts/table1_units.py pack|unpack|rates|check-data|has-gpu-bench|shapes ...

prints a one-line notice on stderr and runs ``nasproxy units`` with the same arguments.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from nasproxy import cli


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    print(
        "table1_units: notice: this script is now `nasproxy units` "
        "(python -m nasproxy.cli units); it goes in the next version",
        file=sys.stderr,
    )
    return cli.main(["units", *args])


if __name__ == "__main__":
    sys.exit(main())
