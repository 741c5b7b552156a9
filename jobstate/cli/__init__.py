"""The `jobstate` command line: run jobs locally, inspect and operate them on DynamoDB.

One module per command group (`local`, `jobs`, `operate`, `callback`, `console`);
importing them registers their commands on the `cli` group of `base`.
"""

from __future__ import annotations

from ..errors import InvalidInput

# base first: it turns a missing click/rich into the one-line MissingExtra
from . import base, callback, console, jobs, local, operate  # noqa: F401 - the others register commands
from .base import CliError, cli, main

__all__ = ["CliError", "InvalidInput", "cli", "main"]
