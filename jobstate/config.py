"""Where a store's AWS settings come from, and the exact error when one is missing or wrong.

botocore reports a wrong setting as something else: a missing profile as ProfileNotFound
from the first request, a misspelt region as a connection error (its endpoint host does
not exist), an endpoint URL without a scheme as `ValueError: Invalid endpoint`, and no
region at all as NoRegionError (or, through PynamoDB, not at all: it falls back to
us-east-1). Each of those becomes a `ConfigurationError` naming the setting to fix,
raised before any request is sent. Reading the environment is all the happy path costs:
the AWS config files are read only when no region variable is set, and the list of
known regions only when a connection failed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from botocore.exceptions import (
    BotoCoreError,
    EndpointConnectionError,
    InvalidRegionError,
    NoRegionError,
    ProfileNotFound,
)

from .errors import ConfigurationError

# A local engine (DynamoDB Local, moto) accepts any region: with an endpoint URL and no
# region configured, this one is used rather than an error.
LOCAL_REGION = "us-east-1"
ENDPOINT_ENV = "JOBSTATE_ENDPOINT_URL"
_REGION_SYNTAX = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")  # botocore's, lower case
SET_REGION = "set AWS_REGION (e.g. AWS_REGION=eu-west-1), pass region=... (--region in the CLI)"


@dataclass(frozen=True)
class Region:
    """A region name and the setting it came from (named in errors)."""

    name: str
    source: str


def endpoint_url(explicit: str | None) -> str | None:
    """The endpoint URL (`explicit`, else JOBSTATE_ENDPOINT_URL), checked: http(s) and a host."""
    value = explicit or os.environ.get(ENDPOINT_ENV) or None
    if value is None:
        return None
    source = "endpoint_url= (--endpoint-url)" if explicit else ENDPOINT_ENV
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        hint = value if "://" in value else f"http://{value}"
        raise ConfigurationError(
            f"the DynamoDB endpoint URL {value!r} (from {source}) is not an http:// or "
            f"https:// URL with a host: set it like {hint!r}, or unset it to use AWS.")
    return value


def given_region(explicit: str | None, client: Any = None) -> Region | None:
    """The region set by argument, environment or an injected client; None if none is."""
    candidates = [(explicit, "region="), (os.environ.get("AWS_REGION"), "AWS_REGION"),
                  (os.environ.get("AWS_DEFAULT_REGION"), "AWS_DEFAULT_REGION")]
    client_region = getattr(getattr(client, "meta", None), "region_name", None)
    if isinstance(client_region, str):
        candidates.append((client_region, "the client passed as client="))
    for name, source in candidates:
        if name:
            return _checked(Region(name, source))
    return None


def resolve_region(explicit: str | None, *, endpoint: str | None, client: Any = None
                   ) -> Region:
    """The region requests go to: argument, environment, client, AWS profile, local default.

    Raises ConfigurationError when nothing sets one and no local endpoint is used, and
    when AWS_PROFILE names a profile that does not exist (its region is looked up).
    """
    region = given_region(explicit, client)
    if region is not None:
        return region
    profile_region = _session_config("region")
    if profile_region:
        return _checked(Region(str(profile_region), _profile_source()))
    if endpoint is not None:
        return Region(LOCAL_REGION, f"the default for a local endpoint ({endpoint})")
    raise ConfigurationError(
        f"no AWS region is configured for DynamoDB: {SET_REGION}, or give the profile a "
        "region (`aws configure set region eu-west-1`). jobstate does not guess us-east-1.")


def explain(exc: BaseException, region: Region | None, endpoint: str | None
            ) -> ConfigurationError | None:
    """The configuration error behind a botocore error, if it is one (else None)."""
    if isinstance(exc, ProfileNotFound):
        return _no_profile(exc)
    if isinstance(exc, InvalidRegionError | NoRegionError):
        where = f"{region.name!r} (from {region.source})" if region else "(none)"
        return ConfigurationError(f"botocore cannot use the AWS region {where}: {exc}; "
                                  f"{SET_REGION}.")
    if (isinstance(exc, EndpointConnectionError) and endpoint is None and region is not None
            and region.name not in known_regions()):
        return ConfigurationError(
            f"AWS region {region.name!r} (from {region.source}) is not a region DynamoDB is "
            f"in, so its endpoint does not exist: fix that setting (e.g. eu-west-1, "
            "us-east-1). A region newer than this botocore needs `pip install -U boto3`.")
    return None


def known_regions(service: str = "dynamodb") -> frozenset[str]:
    """Every region of every partition botocore knows for `service`."""
    from botocore.session import get_session

    session = get_session()
    return frozenset(r for p in session.get_available_partitions()
                     for r in session.get_available_regions(service, partition_name=p))


def _checked(region: Region) -> Region:
    if not _REGION_SYNTAX.match(region.name):
        raise ConfigurationError(
            f"AWS region {region.name!r} (from {region.source}) is not a region name: "
            "use one like eu-west-1 or us-east-1.")
    return region


def _profile_source() -> str:
    profile = os.environ.get("AWS_PROFILE") or os.environ.get("AWS_DEFAULT_PROFILE")
    return f"the AWS profile {profile or 'default'!r} in the AWS config file"


def _session_config(name: str) -> Any:
    """A setting of the AWS config files (profile-aware), as botocore reads it."""
    from botocore.session import Session

    try:
        return Session().get_config_variable(name)
    except ProfileNotFound as exc:
        raise _no_profile(exc) from None


def _no_profile(exc: BotoCoreError) -> ConfigurationError:
    name = "AWS_PROFILE" if os.environ.get("AWS_PROFILE") else "AWS_DEFAULT_PROFILE"
    files = (f"{os.environ.get('AWS_CONFIG_FILE') or '~/.aws/config'} or "
             f"{os.environ.get('AWS_SHARED_CREDENTIALS_FILE') or '~/.aws/credentials'}")
    return ConfigurationError(
        f"{exc} ({name}={os.environ.get(name)!r}): create it (`aws configure --profile "
        f"{os.environ.get(name)}`), fix the name, or unset {name}; profiles are read from "
        f"{files}.")
