"""`python -m jobstate.local FD`: the worker process (see `jobstate.local.worker`)."""

from __future__ import annotations

import sys

from .worker import main

if __name__ == "__main__":
    sys.exit(main())
