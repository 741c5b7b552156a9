"""Exceptions: one root, subclasses named for what the caller does next."""

from __future__ import annotations

from typing import Any


class JobStateError(Exception):
    """Root of every error jobstate raises on purpose."""

    def __init__(self, message: str, *, job_id: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.details = details


class InvalidInput(JobStateError, ValueError):
    """An argument is malformed (id, type, key, limit); nothing was written."""


class InvalidEvent(InvalidInput):
    """The handler got an event that is neither a jobstate step nor a start request."""


class UnknownJobType(InvalidInput):
    """No `@app.job(...)` is registered under that name."""


class ConfigurationError(InvalidInput):
    """An AWS setting (region, profile, endpoint URL) is missing or wrong: fix the one the
    message names. Raised before any request is sent, so nothing was written."""


class MissingExtra(JobStateError, ImportError):
    """A feature needs an optional dependency group that is not installed; the message
    names the `pip install` to run (e.g. `pip install 'jobstate[cli]'`)."""

    def __init__(self, message: str, *, extra: str, module: str | None) -> None:
        super().__init__(message, extra=extra)
        self.extra = extra
        self.name = module  # ImportError's field: the module that was missing


class StateNotSerializable(JobStateError, TypeError):
    """Cursor, tokens, progress or a result cannot be stored as JSON; nothing was written."""


class StateTooLarge(JobStateError, ValueError):
    """State would make a DynamoDB item exceed its size budget; nothing was written."""


class JobNotFound(JobStateError, LookupError):
    """No job with that id exists (or it expired)."""


class JobConflict(JobStateError):
    """A job with that id exists with a different type or input."""


class JobFinished(JobStateError):
    """The job is in a terminal state and cannot be changed that way."""


class LeaseLost(JobStateError):
    """This invocation no longer owns the step (expired, taken over, or cancelled).

    Stop work: the write that raised this was not applied, and nothing must be dispatched.
    """


class JobCancelled(LeaseLost):
    """The job was cancelled while this step ran."""


class EffectOutcomeUnknown(JobStateError):
    """An at-most-once effect was started but never recorded done; did it happen?"""

    def __init__(self, message: str, *, job_id: str, key: str) -> None:
        super().__init__(message, job_id=job_id, key=key)
        self.key = key


class EffectResultNotStored(JobStateError):
    """An effect's call returned, but its result could not be stored (encoded, encrypted).

    The effect happened: its record stays STARTED (never DONE with a wrong result), and the
    step's retry follows the effect's semantics — `reconcile`, a park for an operator
    (at-most-once), or a new call (at-least-once).
    """

    def __init__(self, message: str, *, job_id: str, key: str) -> None:
        super().__init__(message, job_id=job_id, key=key)
        self.key = key


class EffectNotDone(Exception):
    """Raised by an effect's `fn` to say the call certainly did not happen.

    Under at-most-once any other exception from `fn` leaves the effect's outcome unknown
    (a timeout after the far side acted looks the same); this one lets the step's retry
    run `fn` again. `raise jobstate.EffectNotDone("rejected before sending") from exc`.
    """


class StoreUnavailable(JobStateError):
    """DynamoDB could not be reached or kept throttling after retries; safe to retry later."""


class DispatchFailed(JobStateError):
    """The continuation could not be sent; the job stays due and the sweeper will resend."""


class InvalidStepResult(JobStateError, TypeError):
    """A step function returned something other than None or `ctx.complete(...)`."""


class TableNotFound(StoreUnavailable):
    """The jobs table does not exist at that endpoint/region."""


class TokensUnwritable(JobStateError):
    """The configured cipher could not encrypt the tokens (KMS denied or unavailable, say);
    nothing was written. The step's attempt fails and is retried like any other."""


class TokensUnreadable(JobStateError):
    """Tokens were stored encrypted and no (or the wrong) cipher was configured."""


class CallbackNotFound(JobStateError, LookupError):
    """No callback answers to this token (unknown, forged, or malformed); nothing was
    written."""


class CallbackClosed(JobStateError):
    """The callback already has a different answer, timed out, or ended (a heartbeat after
    the end); the answer was not recorded."""


class CallbackFailed(JobStateError):
    """`cb.result()`: the sender reported a failure (`error` is its text)."""

    def __init__(self, message: str, *, job_id: str | None = None, name: str = "",
                 error: str = "") -> None:
        super().__init__(message, job_id=job_id, name=name)
        self.name = name
        self.error = error


class CallbackTimedOut(JobStateError):
    """`cb.result()`: no answer came within the timeout, or a heartbeat was missed."""
