"""JSON encoding of user state, with the checks that must pass before anything is written."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InvalidInput, StateNotSerializable, StateTooLarge
from .redact import REDACTED as REDACTED  # re-exported: `jobstate.codec.REDACTED` is documented
from .redact import redact as redact
from .redact import scrub as scrub

ITEM_LIMIT_BYTES = 400 * 1024
"""DynamoDB's hard item size limit, attribute names included."""

STATE_BUDGET_BYTES = 350 * 1024
"""What user state (cursor + tokens + input + progress + result) may use of one item.

The rest is left for jobstate's own attributes, so a write never fails at DynamoDB.
"""

# \Z, not $: `$` also matches before a trailing newline, which let "id\n" through.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/=+\-]{0,199}\Z")
_TYPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}\Z")


# Python refuses to turn ints of more than sys.get_int_max_str_digits() digits (4300 by
# default; about 14,000 bits) into text; only ints near that size are tried.
_INT_BITS_CHECKED = 10_000


def _check_json(value: Any, path: str, depth: int = 0) -> None:
    if depth > 32:
        raise StateNotSerializable(
            f"{path} is nested more than 32 levels deep; flatten it before storing it."
        )
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int):
        if value.bit_length() > _INT_BITS_CHECKED:
            try:
                str(value)
            except ValueError:
                raise StateNotSerializable(
                    f"{path} is an int of {value.bit_length()} bits, too large to write as "
                    "JSON text; store it as a string (str(n)) or in S3."
                ) from None
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise StateNotSerializable(
                f"{path} is {value!r}; JSON has no NaN or infinity. Store it as a string or None."
            )
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise StateNotSerializable(
                    f"{path} has a key of type {type(k).__name__} ({k!r}); JSON object keys "
                    "must be strings."
                )
            _check_json(v, f"{path}[{k!r}]", depth + 1)
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_json(v, f"{path}[{i}]", depth + 1)
        return
    raise StateNotSerializable(
        f"{path} holds a {type(value).__name__}, which is not JSON-serialisable; store "
        "plain dicts, lists, strings, numbers, booleans or None (e.g. bytes as base64, "
        "datetimes as ISO strings)."
    )


def dumps(value: Any, what: str) -> str:
    """Serialise `value` to compact JSON or raise a clear error naming `what`."""
    if type(value) is dict and not value:
        return "{}"  # no tokens, an empty cursor: every step encodes one or two
    _check_json(value, what)
    text = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        # A lone surrogate (e.g. from a mis-decoded byte string): DynamoDB stores UTF-8.
        raise StateNotSerializable(
            f"{what} holds a string with a lone surrogate ({text[exc.start]!r}), which is "
            "not valid Unicode and cannot be stored; fix the decoding that produced it."
        ) from None
    return text


def loads(text: str | None, default: Any = None) -> Any:
    if text is None or text == "":
        return default
    return json.loads(text)


def size_of(*texts: str | None) -> int:
    return sum(len(t.encode("utf-8")) for t in texts if t)


def check_budget(parts: dict[str, str | None], budget: int = STATE_BUDGET_BYTES) -> None:
    """Raise StateTooLarge if the encoded parts together exceed the item budget."""
    total = sum(size_of(v) for v in parts.values())
    if total > budget:
        biggest = max(parts.items(), key=lambda kv: size_of(kv[1]))
        raise StateTooLarge(
            f"job state is {total} bytes, over the {budget}-byte budget of one DynamoDB item "
            f"(items are limited to {ITEM_LIMIT_BYTES} bytes); the largest part is "
            f"{biggest[0]} at {size_of(biggest[1])} bytes. Keep cursors and tokens small "
            "(offsets, ids); put bulk data in S3 and store its key."
        )


def input_hash(input_json: str) -> str:
    return hashlib.sha256(input_json.encode("utf-8")).hexdigest()[:32]


def validate_job_id(job_id: object) -> str:
    if not isinstance(job_id, str) or not _ID_RE.match(job_id):
        shown = repr(job_id)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        raise InvalidInput(
            f"invalid job id {shown}: use 1-200 characters from letters, digits and "
            "._:@/=+- starting with a letter or digit (hash long natural keys, e.g. "
            "jobstate.stable_id(...))."
        )
    return job_id


def validate_job_type(job_type: object) -> str:
    if not isinstance(job_type, str) or not _TYPE_RE.match(job_type):
        shown = repr(job_type)[:80]
        raise InvalidInput(
            f"invalid job type {shown}: use 1-64 characters from letters, digits and ._- "
            "starting with a letter or digit."
        )
    return job_type


def stable_id(*parts: object, prefix: str = "") -> str:
    """A deterministic job id from natural-key parts (e.g. bucket, key, version)."""
    raw = "\x1f".join(str(p) for p in parts)
    digest = hashlib.sha256(raw.encode("utf-8")).hexdigest()[:40]
    if prefix:
        validate_job_type(prefix)
        return f"{prefix}-{digest}"
    return digest


@dataclass(frozen=True)
class Cipher:
    """Optional application-level encryption of tokens and effect results (on top of
    DynamoDB's at-rest SSE).

    `encrypt` and `decrypt` map str -> str (e.g. a Fernet wrapper). With `context=True`
    they also take a dict naming what the text is — `table`, `job_id` and `kind`
    ("tokens" or "effect-result") — so a cipher can bind each ciphertext to its job and
    refuse one moved to another (`jobstate.kms` ships such a cipher, backed by KMS).
    """

    encrypt: Callable[..., str]
    decrypt: Callable[..., str]
    context: bool = False

    def seal(self, text: str, context: Mapping[str, str]) -> str:
        """`text` encrypted (what jobstate calls; it passes the context when asked to)."""
        return self.encrypt(text, dict(context)) if self.context else self.encrypt(text)

    def open(self, text: str, context: Mapping[str, str]) -> str:
        """`text` decrypted, for the same context it was sealed with."""
        return self.decrypt(text, dict(context)) if self.context else self.decrypt(text)


