"""Configuration errors are exact: each wrong or missing AWS setting is a ConfigurationError
naming the setting to fix, raised before any request is sent — never "could not be
reached ... safe to retry", a raw ValueError, or a silent fall back to us-east-1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError

import jobstate
from jobstate import config


@pytest.fixture
def bare_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No region, profile or endpoint in the environment; AWS config files in tmp_path."""
    for key in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
                "JOBSTATE_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return tmp_path


# -- region -------------------------------------------------------------------------------------


def test_no_region_is_an_error_naming_aws_region_not_us_east_1(bare_aws: Path) -> None:
    store = jobstate.JobStore("t")  # constructing never fails for want of a region...
    with pytest.raises(jobstate.ConfigurationError) as err:
        store.get("j1")  # ...the first request does, before anything is sent
    message = str(err.value)
    assert "no AWS region is configured" in message
    assert "AWS_REGION" in message and "region=" in message
    assert "does not guess us-east-1" in message
    with pytest.raises(jobstate.ConfigurationError):
        store.create_table()
    with pytest.raises(jobstate.ConfigurationError):
        _ = store.region


def test_a_module_level_store_imports_without_a_region(bare_aws: Path) -> None:
    app = jobstate.App(store=jobstate.JobStore())  # the handler pattern: import must work
    assert app.store.table_name == "jobstate"


def test_the_region_comes_from_argument_then_environment(bare_aws: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    assert jobstate.JobStore("t").region == "eu-central-1"
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    assert jobstate.JobStore("t").region == "eu-west-1"
    assert jobstate.JobStore("t", region="ap-south-1").region == "ap-south-1"


def test_the_region_of_the_aws_profile_is_used(bare_aws: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (bare_aws / "config").write_text("[profile dev]\nregion = eu-north-1\n")
    monkeypatch.setenv("AWS_PROFILE", "dev")
    store = jobstate.JobStore("t")
    assert store.region == "eu-north-1"


def test_a_local_endpoint_needs_no_region(bare_aws: Path) -> None:
    # DynamoDB Local and moto accept any region: the demo and the CLI against a local
    # engine work with no AWS settings at all.
    store = jobstate.JobStore("t", endpoint_url="http://127.0.0.1:8000")
    assert store.region == config.LOCAL_REGION


def test_an_injected_client_brings_its_region(bare_aws: Path) -> None:
    from botocore.session import get_session

    # (not jobstate.testing.dynamodb_client: its session is shared by the whole run, and
    # one made before moto is imported would not be intercepted by moto)
    client = get_session().create_client("dynamodb", "sa-east-1")
    store = jobstate.JobStore("t", client=client)
    assert store.region == "sa-east-1"


def test_an_unknown_region_names_the_setting(bare_aws: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-esat-1")
    store = jobstate.JobStore("t")

    # what botocore does for a region whose endpoint host does not exist (DNS fails);
    # raised here so the test needs no network
    def no_such_host(request: Any, **_: Any) -> None:
        raise EndpointConnectionError(endpoint_url=request.url)

    store.client.meta.events.register("before-send.dynamodb.*", no_such_host)
    with pytest.raises(jobstate.ConfigurationError) as err:
        store.get("j1")
    message = str(err.value)
    assert "'us-esat-1' (from AWS_REGION) is not a region DynamoDB is in" in message
    assert "safe to retry" not in message


def test_a_known_region_that_cannot_be_reached_is_still_retryable(
        bare_aws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    store = jobstate.JobStore("t", region="eu-west-1")

    def network_down(request: Any, **_: Any) -> None:
        raise EndpointConnectionError(endpoint_url=request.url)

    store.client.meta.events.register("before-send.dynamodb.*", network_down)
    with pytest.raises(jobstate.StoreUnavailable) as err:
        store.get("j1")
    assert not isinstance(err.value, jobstate.ConfigurationError)
    assert "safe to retry" in str(err.value)


@pytest.mark.parametrize("name", ["US East", "eu_west_1", "-eu-west-1", "eu-west-1 "])
def test_a_malformed_region_is_refused_when_the_store_is_made(bare_aws: Path,
                                                              name: str) -> None:
    with pytest.raises(jobstate.ConfigurationError) as err:
        jobstate.JobStore("t", region=name)
    assert f"{name!r} (from region=) is not a region name" in str(err.value)


def test_known_regions_include_every_partition() -> None:
    regions = config.known_regions()
    assert {"us-east-1", "eu-west-1", "cn-north-1", "us-gov-west-1"} <= regions


# -- profile ------------------------------------------------------------------------------------


@pytest.mark.parametrize("region_from_env", [True, False])
def test_a_missing_profile_names_aws_profile(bare_aws: Path, monkeypatch: pytest.MonkeyPatch,
                                             region_from_env: bool) -> None:
    (bare_aws / "config").write_text("[profile dev]\nregion = eu-north-1\n")
    monkeypatch.setenv("AWS_PROFILE", "prod")
    if region_from_env:  # the region is set, so the profile is first read by botocore
        monkeypatch.setenv("AWS_REGION", "eu-west-1")
    store = jobstate.JobStore("t")
    for call in (lambda: store.get("j1"), store.create_table):
        with pytest.raises(jobstate.ConfigurationError) as err:
            call()
        message = str(err.value)
        assert "The config profile (prod) could not be found (AWS_PROFILE='prod')" in message
        assert "aws configure --profile prod" in message
        assert str(bare_aws / "config") in message
        assert "safe to retry" not in message


# -- endpoint URL ---------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["localhost:8000", "127.0.0.1:8000", "ftp://h:1", "http://"])
def test_an_endpoint_url_without_scheme_or_host_is_refused_when_the_store_is_made(
        bare_aws: Path, url: str) -> None:
    with pytest.raises(jobstate.ConfigurationError) as err:
        jobstate.JobStore("t", endpoint_url=url)
    message = str(err.value)
    assert f"endpoint URL {url!r} (from endpoint_url= (--endpoint-url))" in message
    if "://" not in url:
        assert f"'http://{url}'" in message


def test_the_endpoint_url_from_the_environment_is_named(bare_aws: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBSTATE_ENDPOINT_URL", "localhost:8000")
    with pytest.raises(jobstate.ConfigurationError) as err:
        jobstate.JobStore("t")
    assert "(from JOBSTATE_ENDPOINT_URL)" in str(err.value)
    assert not isinstance(err.value, jobstate.StoreUnavailable)


# -- the Lambda client of LambdaContinuation -------------------------------------------------------


def test_lambda_continuation_without_a_region_is_the_same_error(bare_aws: Path) -> None:
    cont = jobstate.LambdaContinuation("worker")
    with pytest.raises(jobstate.ConfigurationError) as err:
        cont.dispatch(jobstate.step_event("j1", 1, "t"))
    assert "no AWS region is configured" in str(err.value)


# -- the CLI: one line, exit code 2 ---------------------------------------------------------------


@pytest.mark.parametrize(("args", "env", "expected"), [
    (["list"], {}, "error: no AWS region is configured"),
    (["--endpoint-url", "localhost:8000", "list"], {}, "error: the DynamoDB endpoint URL"),
    (["list"], {"AWS_PROFILE": "nope", "AWS_REGION": "eu-west-1"},
     "error: The config profile (nope) could not be found"),
    (["--region", "Mars 1", "list"], {}, "error: AWS region 'Mars 1' (from region=)"),
])
def test_the_cli_prints_one_line_and_exits_2(bare_aws: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str],
                                             args: list[str], env: dict[str, str],
                                             expected: str) -> None:
    from jobstate.cli import main

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(expected), err
    assert err.count("\n") == 1
