"""Lambda bundles of jobstate: build one, measure the core's, check what `sam build` made.

    python scripts/lambda_bundle.py measure [--project DIR] [--limit-mb 10]
        `pip install --target` of the project's core (what `jobstate` in a function's
        requirements installs), for the Lambda platform; prints its size by package and
        fails if, without what the Lambda Python runtime already has (boto3, botocore,
        s3transfer, jmespath, urllib3, python-dateutil, six), it is over the limit.
    python scripts/lambda_bundle.py build --handler MODULE --out DIR
        One function's bundle (what the Makefile runs for `sam build`): the core,
        without the runtime's packages, plus handlers/__init__.py and handlers/MODULE.py.
    python scripts/lambda_bundle.py check-sam [--build-dir .aws-sam/build]
        After `sam build`: prints each function's bundle size and fails if a bundle
        holds anything it does not run (tests/, docs/, benchmarks/, another function's
        handler, moto/click/rich, a compiled extension) or cannot import its handler with
        only the bundle and the runtime's packages on the path.

Nothing here needs AWS; `measure` and `build` need the package index (pip).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MB = 1024 * 1024
# Distributions the Lambda Python runtimes already contain (boto3 and its dependencies).
RUNTIME_PROVIDED = frozenset({"boto3", "botocore", "s3transfer", "jmespath", "urllib3",
                              "python-dateutil", "six"})
RUNTIME_MODULES = ("boto3", "botocore", "s3transfer", "jmespath", "urllib3", "dateutil", "six")
PLATFORMS = {"arm64": "manylinux2014_aarch64", "x86_64": "manylinux2014_x86_64"}
# Never in a function's bundle: what the project keeps beside the code, and the extras.
FORBIDDEN = ("tests", "docs", "benchmarks", "scripts", "bin", "moto", "click", "rich", "flask",
             "werkzeug", "pytest", "cfnlint", "sympy", "samtranslator", ".venv", ".git")


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def install_core(project: Path, target: Path, *, arch: str, python: str) -> float:
    """`pip install --target target project` for Lambda's platform; returns seconds taken."""
    began = time.monotonic()
    _pip("install", "-q", "--target", str(target), "--upgrade", "--no-compile",
         "--platform", PLATFORMS[arch], "--implementation", "cp", "--python-version", python,
         "--only-binary=:all:", str(project_wheel(project)))
    return time.monotonic() - began


def project_wheel(project: Path) -> Path:
    """The project's wheel, built once per content of its sources (sam build asks 5 times).

    Built from a copy of the package sources only, so nothing is written into the project
    (sam build runs this in the source tree) and nothing else gets in.
    """
    sources = [project / "pyproject.toml", project / "README.md",
               *sorted((project / "jobstate").rglob("*.py")), project / "jobstate/py.typed"]
    digest = hashlib.sha256()
    for f in sources:
        digest.update(str(f.relative_to(project)).encode() + b"\0" + f.read_bytes() + b"\0")
    cache = Path(tempfile.gettempdir()) / "jobstate-lambda-wheels" / digest.hexdigest()[:16]
    built = sorted(cache.glob("jobstate-*.whl"))
    if built:
        return built[0]
    with tempfile.TemporaryDirectory(prefix="jobstate-wheel-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(project / name, src / name)
        shutil.copytree(project / "jobstate", src / "jobstate",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        _pip("wheel", "-q", "--no-deps", "-w", str(Path(tmp) / "wheels"), str(src))
        (wheel,) = (Path(tmp) / "wheels").glob("jobstate-*.whl")
        cache.mkdir(parents=True, exist_ok=True)
        final = cache / wheel.name
        staged = cache / f".{wheel.name}.{os.getpid()}"
        shutil.copy(wheel, staged)
        os.replace(staged, final)  # atomic: a parallel build sees a whole wheel or none
        return final


def distributions(target: Path) -> dict[str, list[Path]]:
    """Installed distribution name -> its files (from each .dist-info/RECORD)."""
    out: dict[str, list[Path]] = {}
    for info in sorted(target.glob("*.dist-info")):
        name = next((line.split(":", 1)[1].strip() for line in
                     (info / "METADATA").read_text(encoding="utf-8").splitlines()
                     if line.startswith("Name:")), info.name.split("-")[0])
        files = [target / line.split(",")[0] for line in
                 (info / "RECORD").read_text(encoding="utf-8").splitlines() if line]
        out[_norm(name)] = [f for f in files if f.is_file()]
    return out


def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def zipped_bytes(path: Path) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "bundle.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
            for f in sorted(path.rglob("*")):
                if f.is_file():
                    z.write(f, f.relative_to(path))
        return archive.stat().st_size


def prune_runtime_provided(target: Path) -> int:
    """Delete the distributions the Lambda runtime provides; returns the bytes removed."""
    removed = 0
    for name, files in distributions(target).items():
        if name in RUNTIME_PROVIDED:
            for f in files:
                removed += f.stat().st_size
                f.unlink()
    for d in sorted((p for p in target.rglob("*") if p.is_dir()), reverse=True):
        if not any(d.iterdir()):
            d.rmdir()
    return removed


# -- measure --------------------------------------------------------------------------------------


def measure(args: argparse.Namespace) -> int:
    project = Path(args.project).resolve()
    with tempfile.TemporaryDirectory(prefix="jobstate-bundle-") as tmp:
        target = Path(tmp) / "bundle"
        seconds = install_core(project, target, arch=args.arch, python=args.python)
        total = tree_bytes(target)
        sizes = {name: sum(f.stat().st_size for f in files)
                 for name, files in distributions(target).items()}
        provided = sum(v for k, v in sizes.items() if k in RUNTIME_PROVIDED)
        print(f"pip install --target <dir> {project} ({args.arch}, Python {args.python}): "
              f"{total / MB:.1f} MB in {len(sizes)} distributions, {seconds:.0f} s")
        for name, size in sorted(sizes.items(), key=lambda kv: -kv[1])[:args.top]:
            mark = "  (in the Lambda runtime)" if name in RUNTIME_PROVIDED else ""
            print(f"  {size / MB:8.2f} MB  {name}{mark}")
        prune_runtime_provided(target)
        bundle = tree_bytes(target)
        print(f"bundle without the runtime's boto3/botocore/s3transfer/jmespath/urllib3/"
              f"python-dateutil/six: {bundle / MB:.2f} MB unzipped, "
              f"{zipped_bytes(target) / MB:.2f} MB zipped (limit {args.limit_mb} MB; "
              f"the runtime's part: {provided / MB:.1f} MB)")
    if bundle > args.limit_mb * MB:
        print(f"FAIL: the core's Lambda bundle is {bundle / MB:.2f} MB, over "
              f"{args.limit_mb} MB: a dependency crept into pyproject's core `dependencies`",
              file=sys.stderr)
        return 1
    return 0


# -- build (the Makefile's targets) -------------------------------------------------------------


def build(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    module = ROOT / "handlers" / f"{args.handler}.py"
    if not module.is_file():
        print(f"no handler module {module}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    install_core(ROOT, out, arch=args.arch, python=args.python)
    prune_runtime_provided(out)
    shutil.rmtree(out / "bin", ignore_errors=True)  # the `jobstate` console script: not run
    (out / "handlers").mkdir(exist_ok=True)
    shutil.copy(ROOT / "handlers" / "__init__.py", out / "handlers" / "__init__.py")
    shutil.copy(module, out / "handlers" / module.name)
    print(f"{args.handler}: {tree_bytes(out) / MB:.2f} MB in {out}")
    return 0


# -- check-sam ----------------------------------------------------------------------------------


def _template_functions(template: Path) -> dict[str, str]:
    """Logical id -> Handler of every AWS::Serverless::Function in a SAM template."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def any_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
        if isinstance(node, yaml.ScalarNode):
            return loader.construct_scalar(node)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node)
        return loader.construct_mapping(node)  # type: ignore[arg-type]

    Loader.add_multi_constructor("!", any_tag)
    tpl = yaml.load(template.read_text(encoding="utf-8"), Loader=Loader)  # a SafeLoader
    return {lid: r["Properties"]["Handler"] for lid, r in tpl["Resources"].items()
            if r.get("Type") == "AWS::Serverless::Function"}


def _runtime_libs(into: Path) -> None:
    """Links to this interpreter's copies of what the Lambda runtime provides."""
    import importlib.util

    for mod in RUNTIME_MODULES:
        spec = importlib.util.find_spec(mod)
        if spec is None or spec.origin is None:
            raise SystemExit(f"{mod} is not importable here: run check-sam with a Python "
                             "that has boto3 (the SAM CLI's venv has)")
        src = Path(spec.origin)
        src = src.parent if src.name == "__init__.py" else src
        (into / src.name).symlink_to(src)


PROBE = r"""
import importlib, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
module, _, attr = sys.argv[3].rpartition(".")
handler = getattr(importlib.import_module(module), attr)
assert callable(handler), sys.argv[3]
extras = {"click", "rich", "moto", "pytest", "flask"} & {m.split(".")[0] for m in sys.modules}
assert not extras, extras
"""


def check_sam(args: argparse.Namespace) -> int:
    build_dir = Path(args.build_dir).resolve()
    functions = _template_functions(Path(args.template).resolve())
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        libs = Path(tmp)
        _runtime_libs(libs)
        for lid, handler in sorted(functions.items()):
            bundle = build_dir / lid
            if not bundle.is_dir():
                problems.append(f"{lid}: no bundle at {bundle}")
                continue
            size, zipped = tree_bytes(bundle), zipped_bytes(bundle)
            top = sorted(p.name for p in bundle.iterdir())
            print(f"{lid:22} {size / MB:6.2f} MB unzipped, {zipped / MB:5.2f} MB zipped: "
                  f"{', '.join(top)}")
            found = [p for p in bundle.rglob("*") if p.name in FORBIDDEN or p.suffix == ".so"]
            problems += [f"{lid}: holds {p.relative_to(bundle)}" for p in found]
            own = f"{handler.rsplit('.', 1)[0].replace('.', '/')}.py"
            handlers = sorted(str(p.relative_to(bundle)) for p in (bundle / "handlers").glob(
                "*.py")) if (bundle / "handlers").is_dir() else []
            if handlers != sorted({"handlers/__init__.py", own}):
                problems.append(f"{lid}: handler modules {handlers}, expected only {own}")
            provided = [name for name in distributions(bundle) if name in RUNTIME_PROVIDED]
            if provided:
                problems.append(f"{lid}: holds {provided}, which the Lambda runtime has")
            if size > args.limit_mb * MB:
                problems.append(f"{lid}: {size / MB:.2f} MB, over {args.limit_mb} MB")
            proc = subprocess.run([sys.executable, "-I", "-S", "-B", "-c", PROBE, str(bundle),
                                   str(libs), handler], capture_output=True, text=True,
                                  env={"PATH": os.environ.get("PATH", ""),
                                       "AWS_REGION": "eu-west-1"}, timeout=120)
            if proc.returncode != 0:
                problems.append(f"{lid}: cannot import {handler} from its bundle: "
                                f"{proc.stderr.strip().splitlines()[-1:]}")
    for p in problems:
        print(f"FAIL: {p}", file=sys.stderr)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("measure", "build"):
        p = sub.add_parser(name)
        p.add_argument("--arch", choices=sorted(PLATFORMS), default="arm64")
        p.add_argument("--python", default="3.11", help="the Lambda runtime's Python")
    m = sub.choices["measure"]
    m.add_argument("--project", default=str(ROOT))
    m.add_argument("--limit-mb", type=float, default=10.0)
    m.add_argument("--top", type=int, default=12, help="how many distributions to list")
    b = sub.choices["build"]
    b.add_argument("--handler", required=True, help="module name under handlers/")
    b.add_argument("--out", default=os.environ.get("ARTIFACTS_DIR"), required=False)
    c = sub.add_parser("check-sam")
    c.add_argument("--build-dir", default=str(ROOT / ".aws-sam" / "build"))
    c.add_argument("--template", default=str(ROOT / "template.yaml"))
    c.add_argument("--limit-mb", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.command == "build" and not args.out:
        parser.error("build needs --out (or ARTIFACTS_DIR, as sam build sets)")
    return {"measure": measure, "build": build, "check-sam": check_sam}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
