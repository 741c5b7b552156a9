"""Summary lines (`name: value (target ...) ok|MISS`) and plain-text tables."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

SUMMARY_RE = re.compile(
    r"^(?P<name>[a-z][a-z0-9_.]*): (?P<value>\S+) \(target (?P<target>[^)]*)\)"
    r"(?: (?P<verdict>ok|MISS))?(?: -- (?P<note>.*))?$"
)


@dataclass
class Summary:
    """One headline number of a figure, with its target (if any) and verdict."""

    name: str
    value: float | int | str | None
    target: str = "none"
    ok: bool | None = None  # None: no target, or the value could not be measured
    note: str = ""
    fmt: str = "{:.3g}"

    def value_text(self) -> str:
        v = self.value
        if v is None:
            return "n/a"
        if isinstance(v, str):
            return v.replace(" ", "_")
        if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) < 1e9):
            return str(int(v))
        return self.fmt.format(v)

    def line(self) -> str:
        text = f"{self.name}: {self.value_text()} (target {self.target})"
        if self.ok is not None:
            text += " ok" if self.ok else " MISS"
        if self.note:
            text += f" -- {self.note}"
        return text

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("fmt")
        d["line"] = self.line()
        return d


def at_most(name: str, value: float | None, limit: float, note: str = "",
            fmt: str = "{:.3g}") -> Summary:
    ok = None if value is None else value <= limit + 1e-9
    return Summary(name, value, f"<= {_limit(limit, fmt)}", ok, note, fmt)


def at_least(name: str, value: float | None, limit: float, note: str = "",
             fmt: str = "{:.3g}") -> Summary:
    ok = None if value is None else value >= limit - 1e-9
    return Summary(name, value, f">= {_limit(limit, fmt)}", ok, note, fmt)


def _limit(x: float, fmt: str) -> str:
    return f"{x:.0%}" if "%" in fmt else _num(x)


def equal(name: str, value: float | None, expected: float, note: str = "") -> Summary:
    ok = None if value is None else math.isclose(value, expected, abs_tol=1e-9)
    return Summary(name, value, f"= {_num(expected)}", ok, note)


def info(name: str, value: float | int | str | None, note: str = "",
         fmt: str = "{:.3g}") -> Summary:
    return Summary(name, value, "none", None, note, fmt)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def cell(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v.is_integer() and abs(v) < 1e12:
            return str(int(v))
        if abs(v) >= 100:
            return f"{v:,.0f}"
        return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10_000 else str(v)
    return str(v)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *,
          markdown: bool = False) -> str:
    """A plain-text (or GitHub markdown) table."""
    cells = [[cell(v) for v in row] for row in rows]
    if markdown:
        out = ["| " + " | ".join(headers) + " |",
               "|" + "|".join("---" for _ in headers) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in cells]
        return "\n".join(out)
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    for r in cells:
        out.append("  ".join(c.rjust(w) if _numeric(c) else c.ljust(w)
                             for c, w in zip(r, widths, strict=True)))
    return "\n".join(out)


def _numeric(text: str) -> bool:
    return bool(re.fullmatch(r"[-+$]?[\d,]*\.?\d+(e[-+]?\d+)?%?x?", text))
