"""The core install and its extras: what works with `pip install jobstate` alone, and the
one-line error each missing extra gives.

The suite runs in the dev environment (every extra installed), so each check runs a fresh
interpreter in which the extras' packages cannot be imported (a meta-path finder refuses
them). `.ci/run` proves the same in a real venv with only the core installed
(`scripts/check-core`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from jobstate import extras
from jobstate.errors import JobStateError, MissingExtra

ROOT = Path(__file__).resolve().parents[1]
EXTRA_PACKAGES = ("click", "rich", "moto", "flask", "werkzeug")

BLOCKER = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = set({blocked!r})

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
""")


def run_without(code: str, blocked: tuple[str, ...] = EXTRA_PACKAGES,
                cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter where `blocked` packages cannot be imported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env["PYTHONPATH"] = str(ROOT)
    script = BLOCKER.format(blocked=blocked) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_core_imports_and_runs_a_step_without_any_extra() -> None:
    proc = run_without("""
        import jobstate, jobstate.local, jobstate.testing
        store = jobstate.JobStore("t", region="eu-west-1")
        cont = jobstate.InMemoryContinuation()
        app = jobstate.App(store, cont)
        assert not {"click", "rich", "moto", "flask"} & {m.split(".")[0] for m in sys.modules}
        print("ok")
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_the_console_script_names_the_cli_extra() -> None:
    proc = run_without("""
        from jobstate.__main__ import main
        sys.exit(main(["list"]))
    """)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == ("error: the jobstate command line needs click, which is not "
                           "installed: pip install 'jobstate[cli]'\n")


def test_importing_the_cli_raises_missing_extra_not_a_raw_import_error() -> None:
    proc = run_without("""
        from jobstate.errors import MissingExtra
        try:
            import jobstate.cli
        except MissingExtra as exc:
            print(type(exc).__name__, exc.extra, exc.name, isinstance(exc, ImportError))
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["MissingExtra", "cli", "click", "True"]


def test_the_cli_without_rich_names_the_cli_extra() -> None:
    proc = run_without("""
        from jobstate.__main__ import main
        sys.exit(main(["--version"]))
    """, blocked=("rich",))
    assert proc.returncode == 1
    assert "needs rich" in proc.stderr and "pip install 'jobstate[cli]'" in proc.stderr


def test_the_local_runtime_without_moto_names_the_local_extra() -> None:
    proc = run_without("""
        from jobstate.local import LocalRuntime
        try:
            LocalRuntime("jobstate.demo.app:app").open()
        except Exception as exc:
            print(type(exc).__name__, "|", exc)
    """)
    assert proc.returncode == 0, proc.stderr
    kind, message = proc.stdout.strip().split(" | ")
    assert kind == "MissingExtra"
    assert message.endswith("pip install 'jobstate[local]'")
    assert "DynamoDB Local" in message  # the other way: a running engine's endpoint


def test_the_demo_with_the_cli_but_without_moto_is_one_line() -> None:
    proc = run_without("""
        from jobstate.__main__ import main
        sys.exit(main(["demo", "--json"]))
    """, blocked=("moto", "flask", "werkzeug"))
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: the embedded DynamoDB")
    assert lines[0].endswith("pip install 'jobstate[local]'")


def test_pytest_loads_the_plugin_without_moto_and_the_fixture_says_what_to_install(
        tmp_path: Path) -> None:
    (tmp_path / "test_mine.py").write_text(textwrap.dedent("""
        import jobstate
        from jobstate.testing import Driver  # the driver itself is core

        def test_core_only():
            assert Driver and jobstate.InMemoryContinuation()

        def test_with_the_fixture(jobstate_app):
            pass
    """))
    proc = run_without(f"""
        import pytest
        sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                              {str(tmp_path / "test_mine.py")!r}]))
    """, blocked=("moto",), cwd=tmp_path)
    assert "1 passed, 1 error" in proc.stdout, proc.stdout + proc.stderr
    assert ("the jobstate_store fixture needs moto, which is not installed: "
            "pip install 'jobstate[testing]'") in proc.stdout
    assert "Traceback" not in proc.stdout


def test_missing_extra_is_a_jobstate_error_and_an_import_error() -> None:
    err = extras.missing("testing", "x", ModuleNotFoundError("no", name="moto.core"))
    assert isinstance(err, MissingExtra) and isinstance(err, JobStateError)
    assert isinstance(err, ImportError) and err.name == "moto" and err.extra == "testing"


def test_an_unrelated_import_error_is_not_reported_as_a_missing_extra() -> None:
    exc = ModuleNotFoundError("No module named 'yaml'", name="yaml")
    assert extras.missing("cli", "the jobstate command line", exc) is exc


# -- pyproject: the extras users install ------------------------------------------------------


def requirements() -> tuple[list[str], dict[str, list[str]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["dependencies"], project["optional-dependencies"]


def names(reqs: list[str]) -> set[str]:
    return {r.split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip() for r in reqs}


def test_the_core_depends_only_on_what_a_lambda_step_needs() -> None:
    core, _ = requirements()
    assert names(core) == {"boto3", "pynamodb", "tenacity"}


@pytest.mark.parametrize("extra", sorted(extras.EXTRAS))
def test_each_extra_installs_the_modules_its_error_names(extra: str) -> None:
    _, optional = requirements()
    provided = names(optional[extra])
    assert "moto" in provided or extra in ("cli", "kms")
    # flask/werkzeug come with moto[server]; every other module is a requirement itself
    # (its distribution spelt with dashes: aws_encryption_sdk is aws-encryption-sdk)
    assert {m.replace("_", "-") for m in extras.EXTRAS[extra]
            if m not in ("flask", "werkzeug")} <= provided
    if "flask" in extras.EXTRAS[extra]:
        assert any(r.startswith("moto[") and "server" in r for r in optional[extra])


def test_all_and_dev_include_every_extra() -> None:
    _, optional = requirements()
    every = set().union(*(names(optional[e]) for e in extras.EXTRAS))
    assert names(optional["all"]) == every
    assert every <= names(optional["dev"])


def test_the_quickstart_is_two_commands_and_ci_runs_the_first_as_written() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Quickstart", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert len(commands) == 2 and commands[1] == "./scripts/test"
    install, run = commands[0].split(" && ")
    assert run == "jobstate demo"
    ci = (ROOT / ".ci/run").read_text().replace(" -q", "").splitlines()
    # the fresh venv installs exactly what the README says
    assert f".venv-quickstart/bin/python -m {install}" in ci
