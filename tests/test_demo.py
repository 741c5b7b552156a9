"""`jobstate demo --json` (issue 5): the scenarios with chaos on, through the
installed console script, for several seeds; exit 0 only if every effect ran once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Real worker processes on real deadlines: run alone, not beside other tests
# (scripts/test runs these after the parallel tier).
pytestmark = pytest.mark.serial

REQUIRED = {"name", "status", "invocations", "steps", "duplicates_delivered",
            "crashes_injected", "effects_expected", "effects_executed"}


def _script() -> str:
    # The script of the interpreter running the tests (the venv's), not one on PATH.
    beside = Path(sys.executable).parent / "jobstate"
    return str(beside) if beside.exists() else shutil.which("jobstate") or str(beside)


@pytest.mark.parametrize("seed", [2, 3])  # .ci/run runs the Quickstart's seed 1 itself
def test_demo_json_passes_with_chaos(seed: int) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JOBSTATE_", "AWS_"))}  # no setup: a fresh shell
    p = subprocess.run([_script(), "demo", "--json", "--seed", str(seed)],
                       capture_output=True, text=True, env=env, timeout=400)
    data = json.loads(p.stdout)  # stdout is exactly one JSON object
    assert p.returncode == 0, (data, p.stderr[-2000:])
    assert data["ok"] is True and data["seed"] == seed
    assert data["chaos"]["crash"] > 0 and data["chaos"]["duplicate"] > 0
    assert [s["name"] for s in data["scenarios"]] == ["file", "etl", "mail", "approval"]
    for s in data["scenarios"]:
        assert set(s) >= REQUIRED
        assert s["status"] == "SUCCEEDED" and s["ok"], s
        assert s["effects_executed"] == s["effects_expected"] > 0
    assert data["scenarios"][2]["effects_expected"] == 2_001
    assert data["runtime"]["timeout_ms"] == 1_500 and data["messages"] == []


def test_a_run_cut_short_fails_and_says_what_to_try() -> None:
    from jobstate.demo import DemoConfig, run_demo

    data = run_demo(DemoConfig(seed=1, time_limit_s=0.5, timeout_ms=2_000))
    assert data["ok"] is False
    assert all(s["problem"] for s in data["scenarios"] if s["status"] != "SUCCEEDED")
    hint = data["messages"][-1]
    assert "did not finish within the 0.5s limit" in hint and "--time-limit" in hint


def test_the_hints_name_the_option_to_raise() -> None:
    from jobstate.demo.runner import DemoConfig, _hints

    cfg = DemoConfig(timeout_ms=1_500, time_limit_s=300)
    stats = {"total": {"kills_at_timeout": 3}}
    [kills] = _hints(cfg, stats, None)
    assert "3 invocation(s) ran past the 1500 ms timeout" in kills
    assert "--timeout-ms 6000" in kills
    stalled = _hints(cfg, {"total": {}}, "made no progress for 45s")
    assert "made no progress for 45s" in stalled[0] and "--keep" in stalled[0]
    assert cfg.stall_window_s == 45  # 1.5 s timeouts: the default window
    assert DemoConfig(timeout_ms=96_000).stall_window_s == 212  # two leases + 10 s
    [late] = _hints(cfg, {"total": {}}, "did not finish within the 300s limit")
    assert "--time-limit 600" in late
