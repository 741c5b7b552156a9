"""The page tokens handed to callers (`store.list`, `sweep`): opaque, and checked.

A token is the JSON of where each shard's listing stopped, base64url-encoded. It comes
back from outside (an HTTP query string, a CLI argument), so decoding checks it is exactly
what was handed out: a crafted token is refused here, never sent to DynamoDB as an
ExclusiveStartKey.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

from .errors import InvalidInput

MAX_TOKEN_CHARS = 8192  # a page's token: at most 8 start keys of ~400 bytes, base64


def encode(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value, sort_keys=True).encode()).decode()


def decode(token: str | None, check: Callable[[dict[str, Any]], bool], refusal: str
           ) -> dict[str, Any]:
    """The value of a token this package handed out (`check` says if it is one), or
    InvalidInput with the `refusal` message."""
    if token is None:
        return {}
    bad = InvalidInput(refusal)
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
        raise bad
    try:
        value = json.loads(base64.urlsafe_b64decode(token.encode()).decode())
    except Exception:  # not base64, not UTF-8, not JSON, or nested too deeply
        raise bad from None
    if not isinstance(value, dict) or not check(value):
        raise bad
    return value


def string_key(start: Any, names: set[str], max_chars: int = 512) -> dict[str, str] | None:
    """A start key made of string attributes `names` only, as plain text (None if not)."""
    if not isinstance(start, dict) or set(start) != names:
        return None
    text = {}
    for name, attr in start.items():
        if not (isinstance(attr, dict) and set(attr) == {"S"} and isinstance(attr["S"], str)
                and 0 < len(attr["S"]) <= max_chars):
            return None
        text[name] = attr["S"]
    return text
