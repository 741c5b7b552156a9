"""The docs are kept true by tests:

- every ```python runnable block in README.md and docs/*.md runs (on moto in-process);
- every ```python pytest block passes as a test file under pytest (the plugin fixtures);
- every `tests/test_x.py::test_name` the docs cite exists;
- docs/api.md documents exactly `jobstate.__all__`, with signatures that match;
- relative links between docs resolve; the CLI commands the docs use exist;
- the cost arithmetic in docs/deployment.md follows from the prices;
- the slim Lambda bundle of docs/deployment.md imports with boto3/pynamodb/tenacity only.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jobstate

ROOT = Path(__file__).resolve().parents[1]

DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.M | re.S)
TEST_REF = re.compile(r"tests/(test_\w+\.py)::(\w+)")


def blocks(marker: str) -> list[Any]:
    out = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            if m.group(1) == "python" and marker in m.group(2).split():
                line = text[:m.start()].count("\n") + 1
                out.append(pytest.param(m.group(3), id=f"{page.name}:{line}"))
    return out


def test_every_doc_page_is_linked_from_the_readme_or_concepts() -> None:
    linked = (ROOT / "README.md").read_text() + (ROOT / "docs/concepts.md").read_text()
    for page in DOCS:
        if page.name != "concepts.md":
            assert page.name in linked, f"{page.name} is not linked from README/concepts"
    assert "docs/" in (ROOT / "README.md").read_text()


# -- runnable blocks ----------------------------------------------------------------------


RUNNABLE = blocks("runnable")


def test_there_are_runnable_blocks() -> None:
    assert len(RUNNABLE) >= 2


def clean_env() -> dict[str, str]:
    """What a reader's shell has: no AWS credentials, region, endpoint or table settings."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("AWS_", "JOBSTATE_", "MOTO_"))} | {"PYTHONPATH": str(ROOT)}


@pytest.mark.parametrize("code", RUNNABLE)
def test_runnable_block(code: str, tmp_path: Path) -> None:
    # "runnable as is": the block alone, as a script, in a fresh interpreter and directory;
    # whatever it needs (moto, a table) it must set up itself
    (tmp_path / "example.py").write_text(code, encoding="utf-8")
    proc = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=clean_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.parametrize("code", blocks("pytest"))
def test_pytest_block(code: str, tmp_path: Path) -> None:
    (tmp_path / "test_doc_example.py").write_text(code, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(tmp_path / "test_doc_example.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout


# -- cited tests exist -------------------------------------------------------------------------


def defined_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith(
                "test"):
            names.add(node.name)
    return names


def test_every_cited_test_exists() -> None:
    cited = 0
    for page in PAGES:
        for file, name in TEST_REF.findall(page.read_text(encoding="utf-8")):
            path = ROOT / "tests" / file
            assert path.exists(), f"{page.name} cites {file}, which does not exist"
            assert name in defined_tests(path), f"{page.name} cites {file}::{name}: not found"
            cited += 1
    assert cited >= 40  # guarantees.md alone cites most of the suite


def test_guarantees_table_covers_the_failure_modes() -> None:
    text = (ROOT / "docs/guarantees.md").read_text(encoding="utf-8")
    rows = [ln for ln in text.splitlines() if ln.startswith("| **")]
    modes = {re.match(r"\| \*\*(.+?)\*\*", r).group(1).lower() for r in rows}  # type: ignore[union-attr]
    for required in ("duplicate delivery", "lost container", "lost continuation",
                     "timed-out step retried", "throttling: dynamodb",
                     "throttling: lambda invoke", "runaway chain", "clock skew",
                     "partial batch"):
        assert required in modes, required
    for row in rows:  # every row names at least one real test
        assert TEST_REF.search(row), row


# -- the API reference ------------------------------------------------------------------------

API = (ROOT / "docs/api.md").read_text(encoding="utf-8")
SECTIONS = re.findall(r"^### `(\w+)`", API, re.M)


def test_api_reference_documents_exactly_all() -> None:
    assert len(SECTIONS) == len(set(SECTIONS)), "a name is documented twice"
    assert set(SECTIONS) == set(jobstate.__all__), (
        f"undocumented: {sorted(set(jobstate.__all__) - set(SECTIONS))}; "
        f"not in __all__: {sorted(set(SECTIONS) - set(jobstate.__all__))}")


def documented_params(sig: str) -> tuple[list[str], bool]:
    """Parameter names of `Name(a, b=1, *, c=...)` text, and whether it has *args."""
    inner = sig[sig.index("(") + 1:sig.rindex(")")]
    inner = inner.replace("=...", "=None")
    fn = ast.parse(f"def f({inner}): pass").body[0]
    assert isinstance(fn, ast.FunctionDef)
    a = fn.args
    names = [x.arg for x in [*a.posonlyargs, *a.args, *a.kwonlyargs]]
    if a.vararg:
        names.append("*" + a.vararg.arg)
    if a.kwarg:
        names.append("**" + a.kwarg.arg)
    return names, a.vararg is not None


@pytest.mark.parametrize("name", SECTIONS)
def test_api_signature_matches(name: str) -> None:
    section = API.split(f"### `{name}`", 1)[1].split("\n### ", 1)[0]
    m = re.search(r"```python\n(.*?)\n```", section, re.S)
    if m is None or not m.group(1).startswith(f"{name}("):
        return  # no signature block (protocols, enums, constants, plain exceptions)
    obj = getattr(jobstate, name)
    real = inspect.signature(obj)
    actual = []
    for p in real.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            actual.append("*" + p.name)
        elif p.kind is p.VAR_KEYWORD:
            actual.append("**" + p.name)
        else:
            actual.append(p.name)
    documented, _ = documented_params(m.group(1))
    assert set(documented) <= set(actual), f"{name}: documents {documented}, real {actual}"
    # Every public parameter is in the signature block or named in the section's text
    # (records list their many fields in prose), so a new option cannot go unmentioned.
    mentioned = set(documented) | set(re.findall(r"`(\w+)`", section))
    missing = [a for a in actual if not a.lstrip("*").startswith("_")
               and a.lstrip("*") not in mentioned and a not in mentioned]
    assert not missing, f"{name}: parameters not documented: {missing}"


def test_api_member_references_exist() -> None:
    refs = re.findall(r"`(\w+)\.(\w+)(?:\(|`)", API)
    checked = 0
    for owner, member in refs:
        if owner not in jobstate.__all__:
            continue
        obj = getattr(jobstate, owner)
        fields = getattr(obj, "__dataclass_fields__", {})
        has = hasattr(obj, member) or member in fields
        if not has and inspect.isclass(obj):
            # instance attributes set in __init__ (App.hooks, InMemoryContinuation.events)
            has = f"self.{member}" in inspect.getsource(obj)
        assert has, f"api.md mentions {owner}.{member}, which does not exist"
        checked += 1
    assert checked >= 40


# -- links and commands -----------------------------------------------------------------------


def test_relative_links_resolve() -> None:
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_cli_commands_used_in_docs_exist() -> None:
    cli = pytest.importorskip("jobstate.cli").cli
    commands = set(cli.commands)
    used = set()
    for page in PAGES:
        text = page.read_text()
        for m in FENCE.finditer(text):
            if m.group(1) in ("bash", "sh", "console"):
                used |= set(re.findall(r"^jobstate ([a-z][\w-]*)", m.group(3), re.M))
        used |= set(re.findall(r"`jobstate ([a-z][\w-]*)", text))
    assert used, "no CLI commands found in the docs"
    for cmd in used:
        assert cmd in commands, f"docs use `jobstate {cmd}`, which the CLI does not have"
    assert "done" in cli.commands["effect"].commands  # `jobstate effect done/retry`


# -- the cost arithmetic ------------------------------------------------------------------------


def test_cost_arithmetic_in_deployment_doc() -> None:
    text = (ROOT / "docs/deployment.md").read_text(encoding="utf-8")
    wru, rru, req, sfn, durable = 0.625, 0.125, 0.20, 25.0, 8.0
    facts = {
        "request floor": 2 * wru + req,
        # The cost model's figures: the WRU (history "recent", then the default history)
        # + the sweeper's RRU + the invokes per step.
        "model": 2 * wru + 0.113 * rru + 1.003 * req,
        "model long": 2 * wru + 0.68 * rru + 1.02 * req,
        "model history": 2.06 * wru + 0.113 * rru + 1.003 * req,
        "model long history": 2.05 * wru + 0.68 * rru + 1.02 * req,
        "step functions": sfn + req,
        "durable": durable + req,
        "once": 2 * wru,
        "once_batch": 4 * wru + rru,
    }
    assert facts == pytest.approx({"request floor": 1.45, "model": 1.46, "model long": 1.54,
                                   "model history": 1.50, "model long history": 1.57,
                                   "step functions": 25.20, "durable": 8.20, "once": 1.25,
                                   "once_batch": 2.625}, abs=0.005)
    for figure in ("$1.45", "$1.46", "$1.54", "$1.50", "$1.57", "0.113 RRU", "0.68 RRU",
                   "$25.20", "$8.20", "$1.25", "$2.625", "$0.625", "$0.20", "$25 per", "$8 per"):
        assert figure in text, figure
    assert "2 × 0.625" not in text or "$1.25" in text


def test_benchmark_reference_agrees_with_the_doc() -> None:
    import json

    ref = ROOT / "benchmarks/results/reference.json"
    if not ref.exists():
        pytest.skip("no benchmark reference run")
    rows = {r["option"]: r for r in json.loads(ref.read_text())["cost"]["steps"]}
    back_to_back = next(r for k, r in rows.items() if k.startswith("jobstate, back-to-back"))
    # 2 WRU for the claim and the commit (history "recent": its records ride on them).
    assert back_to_back["wru"] == pytest.approx(2, abs=0.01)
    deployment = (ROOT / "docs" / "deployment.md").read_text()
    models = [r for k, r in rows.items() if k.startswith("jobstate, cost model")]
    assert len(models) == 4  # both periods, history "recent" and the default
    for model in models:
        assert f"**${model['usd_per_million']:.2f}**" in deployment, model["option"]


# -- the slim bundle ------------------------------------------------------------------------------

SLIM_PROBE = r"""
import sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import jobstate
from handlers import batch_mailer, etl_poller, s3_file_processor, status_api, sweeper
app = jobstate.App(jobstate.JobStore("t"), jobstate.InMemoryContinuation())
banned = {"click", "rich", "moto", "pytest"} & {m.split(".")[0] for m in sys.modules}
assert not banned, banned
print("ok", sorted(s3_file_processor.app.specs), sorted(batch_mailer.app.specs))
"""


def test_slim_bundle_needs_only_boto3_pynamodb_tenacity(tmp_path: Path) -> None:
    import importlib.util

    bundle, libs = tmp_path / "code", tmp_path / "libs"
    bundle.mkdir()
    libs.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for pkg in ("jobstate", "handlers"):
        shutil.copytree(ROOT / pkg, bundle / pkg, ignore=ignore)
    # What the docs install (pynamodb, tenacity) plus what the Lambda runtime provides
    # (boto3 and botocore with their own dependencies).
    for mod in ("pynamodb", "tenacity", "boto3", "botocore", "s3transfer", "jmespath",
                "dateutil", "urllib3", "six"):
        spec = importlib.util.find_spec(mod)
        assert spec is not None and spec.origin is not None, mod
        src = Path(spec.origin)
        if src.name == "__init__.py":
            shutil.copytree(src.parent, libs / mod, ignore=ignore)
        else:
            shutil.copy(src, libs / src.name)
    size = sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file())
    size += sum(f.stat().st_size for p in ("pynamodb", "tenacity")
                for f in (libs / p).rglob("*") if f.is_file())
    assert size < 3 * 1024 * 1024, f"the slim bundle is {size} bytes"
    env = {"PATH": os.environ.get("PATH", ""), "AWS_DEFAULT_REGION": "us-east-1"}
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", SLIM_PROBE, str(bundle),
                           str(libs)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok ['file-processor'] ['batch-mailer', 'batch-mailer-chain']")


def test_the_transition_table_in_concepts_is_the_codes() -> None:
    from jobstate import statemachine

    text = (ROOT / "docs" / "concepts.md").read_text()
    shown = text.split("<!-- transitions:begin -->\n", 1)[1].split("\n<!-- transitions:end", 1)[0]
    assert shown == statemachine.table_markdown(), (
        "docs/concepts.md's transition table is not statemachine.table_markdown(); paste it")
