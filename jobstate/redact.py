"""Keeping tokens out of text: redacting token mappings, scrubbing them out of messages.

An exception raised by user code can quote a token in any form it takes on the way: as is,
JSON- or repr-escaped (`\\u00e9`, `\\xe9`), URL-encoded (once or twice, either hex case),
HTML-escaped, as UTF-8 bytes (`b'\\xc3\\xa9'`), in base64, or as a number. `scrub` removes
every one of those forms. Token values of fewer than `WHOLE_WORD_BELOW` characters are
removed where they stand alone (not inside a longer word or number), so a token "42" is
scrubbed from "order 42 failed" but "ok" does not blank "token".
"""

from __future__ import annotations

import base64
import html
import json
import re
import urllib.parse
from typing import Any

REDACTED = "***redacted***"
WHOLE_WORD_BELOW = 4
_MAX_DEPTH = 32
_HEX_ESCAPE = re.compile(r"%([0-9A-F]{2})")


def redact(value: Any) -> Any:
    """Replace every leaf of a tokens mapping with a marker, keeping its keys visible."""
    if isinstance(value, dict):
        return {k: REDACTED for k in value}
    if value in (None, {}):
        return value
    return REDACTED


def scrub(text: str, *secrets: Any) -> str:
    """`text` with every token value found in `secrets`, in every encoding, replaced."""
    values: set[str] = set()
    for s in secrets:
        _leaves(s, values)
    pattern = _pattern(values)
    return text if pattern is None else pattern.sub(REDACTED, text)


def _leaves(value: Any, out: set[str], depth: int = 0) -> None:
    if depth > _MAX_DEPTH or value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        if value:
            out.add(value)
    elif isinstance(value, int | float):
        out.update({str(value), repr(value), json.dumps(value)})
    elif isinstance(value, dict):
        for v in value.values():
            _leaves(v, out, depth + 1)
    elif isinstance(value, list | tuple):
        for v in value:
            _leaves(v, out, depth + 1)


def encodings(value: str) -> set[str]:
    """The forms `value` can take inside an exception message."""
    forms = {value}
    for encode in _ENCODERS:
        try:
            forms.update(encode(value))
        except (UnicodeError, ValueError):  # a lone surrogate has no UTF-8 form, say
            continue
    return {f for f in forms if f}


def _escaped(value: str) -> list[str]:
    return [json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1],
            repr(value)[1:-1], ascii(value)[1:-1],
            value.encode("unicode_escape").decode("ascii"),
            html.escape(value), html.escape(value, quote=False)]


def _as_bytes(value: str) -> list[str]:
    raw = value.encode("utf-8", "surrogatepass")
    forms = [repr(raw)[2:-1]]
    if len(value) >= WHOLE_WORD_BELOW:
        for enc in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
            text = enc.decode("ascii")
            forms += [text, text.rstrip("=")]
    return forms


def _url_encoded(value: str) -> list[str]:
    forms = []
    for quoted in (urllib.parse.quote(value, safe=""), urllib.parse.quote(value),
                   urllib.parse.quote_plus(value), urllib.parse.quote_plus(value, safe="")):
        forms += [quoted, urllib.parse.quote(quoted, safe="")]  # a URL in a query parameter
    return forms


_ENCODERS = (_escaped, _as_bytes, _url_encoded)


def _regex(form: str) -> str:
    # Percent escapes match in either hex case (%2f and %2F).
    escaped = re.escape(form)
    return _HEX_ESCAPE.sub(lambda m: "%(?i:" + m.group(1) + ")", escaped)


def _pattern(values: set[str]) -> re.Pattern[str] | None:
    alternatives: dict[str, str] = {}
    for value in values:
        short = len(value) < WHOLE_WORD_BELOW
        for form in encodings(value):
            expr = _regex(form)
            if short or len(form) < WHOLE_WORD_BELOW:
                expr = rf"(?<![0-9A-Za-z]){expr}(?![0-9A-Za-z])"
            alternatives[form] = expr
    if not alternatives:
        return None
    # Longest first, so a token's escaped form is not cut short by a shorter token.
    ordered = sorted(alternatives, key=len, reverse=True)
    return re.compile("|".join(alternatives[f] for f in ordered))
