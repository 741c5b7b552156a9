"""`jobstate demo --json` (issue 5): the three scenarios with chaos on, through the
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
    return shutil.which("jobstate") or str(Path(sys.executable).parent / "jobstate")


@pytest.mark.parametrize("seed", [2, 3])  # .ci/run runs the Quickstart's seed 1 itself
def test_demo_json_passes_with_chaos(seed: int) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JOBSTATE_", "AWS_"))}  # no setup: a fresh shell
    p = subprocess.run([_script(), "demo", "--json", "--seed", str(seed)],
                       capture_output=True, text=True, env=env, timeout=120)
    data = json.loads(p.stdout)  # stdout is exactly one JSON object
    assert p.returncode == 0, (data, p.stderr[-2000:])
    assert data["ok"] is True and data["seed"] == seed
    assert data["chaos"]["crash"] > 0 and data["chaos"]["duplicate"] > 0
    assert [s["name"] for s in data["scenarios"]] == ["file", "etl", "mail"]
    for s in data["scenarios"]:
        assert set(s) >= REQUIRED
        assert s["status"] == "SUCCEEDED" and s["ok"], s
        assert s["effects_executed"] == s["effects_expected"] > 0
    assert data["scenarios"][2]["effects_expected"] == 2_001
    assert data["wall_s"] < 60
