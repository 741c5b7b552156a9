"""Hypothesis profiles of the property tier (imported by the property test modules).

    HYPOTHESIS_PROFILE=dev   fast local runs (default outside CI)
    HYPOTHESIS_PROFILE=ci    >= 200 examples per property (default when CI=true)
    HYPOTHESIS_PROFILE=slow  2000 examples per property (`pytest --slow`)

Every profile sets `derandomize=False` explicitly: hypothesis's own CI profile (loaded
when CI is set) would derandomize and replay the same examples in every CI run, so a
property suite that is run on every commit would never explore anything new. A failure
prints a blob that reproduces it (`print_blob=True`).

The profiles are registered here but not loaded globally, so other hypothesis tests keep
their own settings; `active()` is what the property modules apply. (To also get
`pytest --hypothesis-profile=slow`, import this module from tests/conftest.py.)
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

SUPPRESSED = (HealthCheck.too_slow, HealthCheck.data_too_large,
              HealthCheck.function_scoped_fixture)

for _name, _examples in (("dev", 30), ("ci", 200), ("slow", 2000)):
    settings.register_profile(_name, max_examples=_examples, deadline=None,
                              suppress_health_check=SUPPRESSED, print_blob=True,
                              derandomize=False)


def profile_name() -> str:
    name = os.environ.get("HYPOTHESIS_PROFILE", "").strip()
    if name:
        return name
    return "ci" if os.environ.get("CI", "").lower() in ("1", "true", "yes") else "dev"


def active(**overrides: object) -> settings:
    """The selected profile's settings, with per-test overrides."""
    return settings(settings.get_profile(profile_name()), **overrides)  # type: ignore[arg-type]
