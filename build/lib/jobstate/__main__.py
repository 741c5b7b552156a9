"""`jobstate` (the console script) and `python -m jobstate`.

Kept free of the CLI's dependencies, so a core install (`pip install jobstate`, as in a
Lambda bundle) answers `jobstate` with the one line that says which extra to install
instead of a traceback.
"""

from __future__ import annotations

import sys

from .errors import MissingExtra


def main(argv: list[str] | None = None) -> int:
    try:
        from .cli import main as cli_main
    except MissingExtra as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
