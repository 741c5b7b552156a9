"""Hypothesis profiles of the property tier (imported by the property test modules).

    HYPOTHESIS_PROFILE=dev   fast local runs (default outside CI)
    HYPOTHESIS_PROFILE=ci    >= 200 examples per property (default when CI=true)
    HYPOTHESIS_PROFILE=slow  2000 examples per property (the "--slow" run)

The profiles are registered here but not loaded globally, so other hypothesis tests keep
their own settings; `active()` is what the property modules apply. (To also get
`pytest --hypothesis-profile=slow`, import this module from tests/conftest.py.)
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

SUPPRESSED = (HealthCheck.too_slow, HealthCheck.data_too_large,
              HealthCheck.function_scoped_fixture)

settings.register_profile("dev", max_examples=30, deadline=None,
                          suppress_health_check=SUPPRESSED)
settings.register_profile("ci", max_examples=200, deadline=None,
                          suppress_health_check=SUPPRESSED, print_blob=True)
settings.register_profile("slow", max_examples=2000, deadline=None,
                          suppress_health_check=SUPPRESSED, print_blob=True)


def profile_name() -> str:
    name = os.environ.get("HYPOTHESIS_PROFILE", "").strip()
    if name:
        return name
    return "ci" if os.environ.get("CI", "").lower() in ("1", "true", "yes") else "dev"


def active(**overrides: object) -> settings:
    """The selected profile's settings, with per-test overrides."""
    return settings(settings.get_profile(profile_name()), **overrides)  # type: ignore[arg-type]
