"""The optional dependency groups (pyproject extras) and the one-line error for a missing one.

`pip install jobstate` is what a Lambda step needs (boto3, pynamodb, tenacity). The rest
is opt-in, and a module that needs an extra imports it through `missing()` so a user sees
`pip install 'jobstate[cli]'` instead of a traceback ending in ModuleNotFoundError.
"""

from __future__ import annotations

from .errors import MissingExtra

# extra -> the top-level modules it provides that jobstate imports
EXTRAS: dict[str, tuple[str, ...]] = {
    "cli": ("click", "rich"),
    "local": ("click", "rich", "moto", "werkzeug", "flask"),
    "testing": ("moto", "pytest"),
    "kms": ("aws_encryption_sdk",),
}


def install_command(extra: str) -> str:
    return f"pip install 'jobstate[{extra}]'"


def missing(extra: str, feature: str, exc: ImportError) -> ImportError:
    """The error to raise for `exc`: a MissingExtra if it is about a module of `extra`,
    else `exc` itself (a broken installation is not a missing extra)."""
    module = (exc.name or "").split(".")[0]
    if module not in EXTRAS[extra]:
        return exc
    return MissingExtra(f"{feature} needs {module}, which is not installed: "
                        f"{install_command(extra)}", extra=extra, module=module)
