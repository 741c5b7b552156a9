"""scripts/lambda_bundle.py: the checks CI runs after `sam build` fail on a bundle that holds
what its function does not run, and the runtime's packages are pruned from a bundle.

(The real `sam build`, the core's size and the core-only venv run in `.ci/run`; they need
the package index. These tests need nothing but the dev environment.)
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lambda_bundle",
                                                  ROOT / "scripts/lambda_bundle.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lb = load()
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")


def fake_dist(target: Path, name: str, files: dict[str, str]) -> None:
    """A distribution as pip --target leaves it: its files and a dist-info with RECORD."""
    info = target / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    for rel, text in files.items():
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        (target / rel).write_text(text)
    records = [*files, f"{info.name}/METADATA", f"{info.name}/RECORD"]
    (info / "RECORD").write_text("".join(f"{r},,\n" for r in records))


def copy_package(name: str, into: Path) -> None:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin is not None
    shutil.copytree(Path(spec.origin).parent, into / name, ignore=IGNORE)


@pytest.fixture
def build_dir(tmp_path: Path) -> Path:
    """What `sam build` makes with the Makefile: per function, core + its handler only."""
    functions = lb._template_functions(ROOT / "template.yaml")
    assert len(functions) == 5
    for lid, handler in functions.items():
        bundle = tmp_path / lid
        shutil.copytree(ROOT / "jobstate", bundle / "jobstate", ignore=IGNORE)
        for pkg in ("pynamodb", "tenacity"):
            copy_package(pkg, bundle)
        module = handler.rsplit(".", 1)[0].split(".")[-1]
        (bundle / "handlers").mkdir()
        for f in ("__init__.py", f"{module}.py"):
            shutil.copy(ROOT / "handlers" / f, bundle / "handlers" / f)
    return tmp_path


def check(build_dir: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = lb.main(["check-sam", "--build-dir", str(build_dir)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_bundles_of_core_and_one_handler_pass(build_dir: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = check(build_dir, capsys)
    assert rc == 0, err
    assert out.count(" MB unzipped") == 5  # every function's size is printed
    assert "SweeperFunction" in out


@pytest.mark.parametrize("intruder", ["tests", "docs", "benchmarks", "moto", "click", "rich"])
def test_a_bundle_holding_what_it_does_not_run_fails(build_dir: Path, intruder: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    (build_dir / "EtlPollerFunction" / intruder).mkdir()
    (build_dir / "EtlPollerFunction" / intruder / "__init__.py").write_text("")
    rc, _, err = check(build_dir, capsys)
    assert rc == 1
    assert f"FAIL: EtlPollerFunction: holds {intruder}" in err


def test_another_functions_handler_in_a_bundle_fails(build_dir: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copy(ROOT / "handlers/batch_mailer.py", build_dir / "SweeperFunction/handlers/")
    rc, _, err = check(build_dir, capsys)
    assert rc == 1
    assert "SweeperFunction: handler modules" in err and "expected only handlers/sweeper.py" in err


def test_a_bundle_that_cannot_import_its_handler_fails(build_dir: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    shutil.rmtree(build_dir / "StatusApiFunction" / "tenacity")
    rc, _, err = check(build_dir, capsys)
    assert rc == 1
    assert "StatusApiFunction: cannot import handlers.status_api.handler" in err
    assert "tenacity" in err


def test_the_runtimes_packages_in_a_bundle_fail(build_dir: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    fake_dist(build_dir / "FileProcessorFunction", "botocore", {"botocore/__init__.py": ""})
    rc, _, err = check(build_dir, capsys)
    assert rc == 1
    assert "FileProcessorFunction: holds ['botocore'], which the Lambda runtime has" in err


def test_prune_removes_exactly_the_runtime_provided_distributions(tmp_path: Path) -> None:
    fake_dist(tmp_path, "botocore", {"botocore/__init__.py": "x" * 100,
                                     "botocore/data/a.json": "{}"})
    fake_dist(tmp_path, "python-dateutil", {"dateutil/__init__.py": "y"})
    fake_dist(tmp_path, "six", {"six.py": "z"})
    fake_dist(tmp_path, "pynamodb", {"pynamodb/__init__.py": "keep"})
    assert set(lb.distributions(tmp_path)) == {"botocore", "python-dateutil", "six", "pynamodb"}
    removed = lb.prune_runtime_provided(tmp_path)
    assert removed >= 104
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pynamodb", "pynamodb-1.0.dist-info"]


def test_the_makefile_builds_every_function_of_the_template() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for lid, handler in lb._template_functions(ROOT / "template.yaml").items():
        module = handler.rsplit(".", 1)[0].split(".")[-1]
        assert f"build-{lid}:\n\t$(BUNDLE) {module}\n" in makefile, lid
