"""How the next step is dispatched: Lambda async invoke, or an in-memory list for tests."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential,
    wait_random,
)

from . import config
from .errors import DispatchFailed, InvalidInput

RETRYABLE_INVOKE_CODES = frozenset({
    "TooManyRequestsException", "ServiceException", "EC2ThrottledException",
    "ResourceNotReadyException", "ThrottlingException", "InternalFailure",
})


class Continuation(Protocol):
    """Sends a jobstate event to the function that runs it, asynchronously."""

    def dispatch(self, event: dict[str, Any], *, context: Any = None) -> None: ...


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return code in RETRYABLE_INVOKE_CODES or status >= 500 or status == 429
    return isinstance(exc, BotoCoreError)


class LambdaContinuation:
    """`lambda:InvokeFunction` with InvocationType=Event, retried on throttling and 5xx.

    The target is `function_name`, else `routes[job_type]`, else the running function
    (`context.function_name`, or AWS_LAMBDA_FUNCTION_NAME outside a handler call).

    Retries never outlast the invocation: with a Lambda `context`, no retry starts later
    than `margin_s` before its deadline. (The step is committed by then; a continuation
    that could not be sent is re-sent by the sweeper, whereas waiting into the timeout
    would get the container killed for nothing.)
    """

    def __init__(
        self,
        function_name: str | None = None,
        *,
        routes: dict[str, str] | None = None,
        client: Any = None,
        attempts: int = 5,
        max_wait_s: float = 2.0,
        margin_s: float = 0.3,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.function_name = function_name
        self.routes = dict(routes or {})
        self._client = client
        self._lock = threading.Lock()
        self.attempts = attempts
        self.margin_s = margin_s
        self._retrying = Retrying(
            retry=retry_if_exception(_retryable),
            stop=stop_after_attempt(attempts),
            wait=wait_exponential(multiplier=0.05, max=max_wait_s) + wait_random(0, 0.05),
            sleep=sleep,
            reraise=True,
        )

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                import boto3  # lazily: nothing connects at import time

                region = config.resolve_region(None, endpoint=None)  # or a clear error
                self._client = boto3.client("lambda", region_name=region.name)
            return self._client

    def target(self, event: dict[str, Any], context: Any) -> str:
        job_type = (event.get("jobstate") or {}).get("job_type")
        name = (
            self.function_name
            or (self.routes.get(job_type) if job_type else None)
            or getattr(context, "function_name", None)
            or os.environ.get("AWS_LAMBDA_FUNCTION_NAME")
        )
        if not name:
            raise InvalidInput(
                "LambdaContinuation does not know which function to invoke: pass "
                "function_name=..., routes={job_type: name}, or call from inside a Lambda "
                "handler (context.function_name)."
            )
        return str(name)

    def dispatch(self, event: dict[str, Any], *, context: Any = None) -> None:
        name = self.target(event, context)
        payload = json.dumps(event).encode("utf-8")
        retrying = self._retrying.copy()
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        if callable(remaining):
            budget_s = max(0.0, int(remaining()) / 1000 - self.margin_s)
            retrying = self._retrying.copy(
                stop=stop_after_attempt(self.attempts) | stop_before_delay(budget_s))
        try:
            for attempt in retrying:
                with attempt:
                    self.client.invoke(FunctionName=name, InvocationType="Event", Payload=payload)
        except (ClientError, BotoCoreError) as exc:
            code = exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else (
                type(exc).__name__)
            raise DispatchFailed(
                f"could not invoke {name} ({code}) after retries; the step is committed and "
                "the sweeper will re-dispatch it."
            ) from exc


class InMemoryContinuation:
    """Collects dispatched events in `events` (tests drive them with `drain`)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def dispatch(self, event: dict[str, Any], *, context: Any = None) -> None:
        with self._lock:
            self.events.append(json.loads(json.dumps(event)))

    def pop_all(self) -> list[dict[str, Any]]:
        with self._lock:
            out, self.events = self.events, []
            return out
