"""The worker process of the local runtime: one warm "Lambda container".

Started by the runtime as `python -m jobstate.local FD` with a socket (a
`multiprocessing.connection.Connection`) on FD; stdout and stderr go to the worker's log
file (its CloudWatch log stream). It imports `module:app` once, then serves invocations
one at a time until told to stop, so module state and its own temp dir survive between
invocations like in a warm container.

Inside the worker the app's continuation is replaced (`app.continuation = ...`) by a
`LambdaContinuation` whose Lambda client sends the event back to the runtime's queue
over the socket, so the library's real retry path runs; the runtime adds the chain's hop
count under the event's `_local` key (the X-Ray trace header of a real chain) and strips
it before the handler sees the event.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError

LOCAL_KEY = "_local"


def load_app(ref: str) -> Any:
    """Import `module:attr` (or `path/to/file.py:attr`) and return the jobstate App there."""
    from ..app import App
    from ..errors import InvalidInput

    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise InvalidInput(f"app reference {ref!r} must look like 'package.module:app'.")
    if module_name.endswith(".py"):
        path = Path(module_name).resolve()
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None or not path.is_file():
            raise InvalidInput(f"no Python file {module_name!r} for app reference {ref!r}.")
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise InvalidInput(f"module {module_name!r} has no attribute {attr!r}.")
        obj = getattr(obj, part)
    if not isinstance(obj, App):
        raise InvalidInput(f"{ref!r} is a {type(obj).__name__}, not a jobstate.App.")
    return obj


@dataclass
class LocalContext:
    """A Lambda context object whose remaining time follows a real deadline."""

    function_name: str
    aws_request_id: str
    deadline_ms: int
    memory_limit_in_mb: int = 128
    function_version: str = "$LATEST"
    log_group_name: str = ""
    log_stream_name: str = ""
    invoked_function_arn: str = field(default="")

    def __post_init__(self) -> None:
        if not self.invoked_function_arn:
            self.invoked_function_arn = (
                f"arn:aws:lambda:us-east-1:000000000000:function:{self.function_name}")
        self.log_group_name = self.log_group_name or f"/aws/lambda/{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self.deadline_ms - int(time.time() * 1000))


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Any:
        yield self.body


class Worker:
    """Serves invocations for the runtime over `conn`."""

    def __init__(self, conn: Connection, config: dict[str, Any]) -> None:
        self.conn = conn
        self.config = config
        self.lock = threading.Lock()
        self.app: Any = None
        self.inv: dict[str, Any] = {}
        self.dispatch_n = 0
        self.ddb_n = 0
        self.last_throttled = False
        self.throttled_payload: bytes | None = None

    def send(self, *msg: Any) -> None:
        with self.lock:
            self.conn.send(msg)

    # -- hooks installed into the app --------------------------------------------------

    def fault(self, name: str, info: dict[str, Any]) -> None:
        if self.inv.get("crash_at") == name:
            self.send("crash", name)
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(10)  # pragma: no cover - the signal is already on its way

    def outcome(self, outcome: str, info: dict[str, Any]) -> None:
        self.send("outcome", outcome, info.get("job_type"), info.get("job_id"))

    def roll(self, what: str, p: float, n: int) -> bool:
        import random

        return p > 0 and random.Random(f"{self.inv.get('seed')}:{what}:{n}").random() < p

    def ddb_throttle(self, request: Any, **_: Any) -> AWSResponse | None:
        """botocore `before-send` handler: answer some requests with a throttle."""
        if not self.inv:
            return None
        self.ddb_n += 1
        if self.last_throttled or not self.roll("ddb", self.inv.get("throttle_dynamodb", 0.0),
                                                self.ddb_n):
            self.last_throttled = False
            return None
        self.last_throttled = True
        self.send("stat", "throttled_dynamodb", self.group())
        body = json.dumps({"__type": "com.amazonaws.dynamodb.v20120810#ThrottlingException",
                           "message": "Rate of requests exceeds the allowed throughput "
                                      "(injected by jobstate.local chaos)"}).encode()
        headers: Any = {"Content-Type": "application/x-amz-json-1.0", "x-amzn-RequestId": "chaos"}
        return AWSResponse(request.url, 400, headers, _Raw(body))

    def group(self) -> str | None:
        body = self.inv.get("event", {}).get("jobstate", {})
        jt = body.get("job_type") or (body.get("start") or {}).get("job_type")
        return jt if isinstance(jt, str) else None

    # -- the Lambda client the continuation uses ----------------------------------------

    def invoke(self, FunctionName: str, InvocationType: str, Payload: bytes,
               **_: Any) -> dict[str, Any]:
        event = json.loads(Payload)
        if Payload == self.throttled_payload:
            self.throttled_payload = None  # the continuation's retry goes through
        else:
            self.dispatch_n += 1
            if self.roll("invoke", self.inv.get("throttle_invoke", 0.0), self.dispatch_n):
                self.throttled_payload = Payload
                jt = (event.get("jobstate") or {}).get("job_type")
                self.send("stat", "throttled_invokes", jt)
                response: Any = {"Error": {"Code": "TooManyRequestsException",
                                           "Message": "Rate exceeded (injected by chaos)"},
                                 "ResponseMetadata": {"HTTPStatusCode": 429}}
                raise ClientError(response, "Invoke")
        event[LOCAL_KEY] = {"depth": int(self.inv.get("depth", 1)) + 1,
                            "function": FunctionName}
        self.send("dispatch", event)
        return {"StatusCode": 202}

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        from .. import faults
        from ..continuation import LambdaContinuation

        app = load_app(self.config["app_ref"])
        over = self.config.get("overrides") or {}
        if over.get("dispatch_timeout_s") is not None:
            app.store.dispatch_timeout_ms = int(over["dispatch_timeout_s"] * 1000)
        if over.get("lease_grace_s") is not None:
            app.lease_grace_ms = int(over["lease_grace_s"] * 1000)
        app.continuation = LambdaContinuation(self.config["function_name"], client=self,
                                              attempts=5, max_wait_s=1.0)
        app.hooks.append(self.outcome)
        faults.install(self.fault)
        app.store.client.meta.events.register("before-send.dynamodb", self.ddb_throttle)
        self.app = app
        self.send("ready", {"table": app.store.table_name,
                            "endpoint_url": app.store.endpoint_url,
                            "region": app.store.region,
                            "dispatch_timeout_ms": app.store.dispatch_timeout_ms,
                            "job_types": sorted(app.specs), "pid": os.getpid()})

    def run_one(self, inv: dict[str, Any]) -> dict[str, Any]:
        self.inv, self.dispatch_n, self.ddb_n, self.last_throttled = inv, 0, 0, False
        self.throttled_payload = None
        event = dict(inv["event"])
        event.pop(LOCAL_KEY, None)
        ctx = LocalContext(self.config["function_name"], inv["request_id"], inv["deadline_ms"])
        print(f"START RequestId: {ctx.aws_request_id} depth {inv.get('depth')}", flush=True)
        try:
            result = self.app.handler(event, ctx)
            return {"ok": True, "result": result}
        except Exception as exc:
            traceback.print_exc()
            return {"ok": False, "error_type": type(exc).__name__, "error": str(exc)}
        finally:
            print(f"END RequestId: {ctx.aws_request_id}", flush=True)
            self.inv = {}

    def serve(self) -> None:
        while True:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                return
            if msg[0] != "invoke":
                return
            self.send("done", self.run_one(msg[1]))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    conn = Connection(int(args[0]))
    config: dict[str, Any] = conn.recv()
    os.environ.update(config.get("env") or {})
    tmp = config.get("tmp_dir")
    if tmp:
        os.makedirs(tmp, exist_ok=True)
        os.environ["TMPDIR"] = tmp
        tempfile.tempdir = tmp
    for p in reversed(config.get("sys_path") or []):
        if p not in sys.path:
            sys.path.insert(0, p)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)
    worker = Worker(conn, config)
    try:
        worker.start()
    except BaseException as exc:
        traceback.print_exc()
        conn.send(("init_error", f"{type(exc).__name__}: {exc}"))
        return 1
    worker.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
