"""The package's shape: imports point down (no cycle, function-level imports included), no
module reaches into another's private names, no module grows past about 500 lines, and
only the state machine's package (jobstate/transitions/, callbacks in its own submodule)
builds a write to a job item.

Read from the source with `ast`, so the checks hold for code that is never imported in a
test run (optional extras, error paths).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "jobstate"
MAX_LINES = 520  # "about 500"
# The owner of the job item's writes: the state machine (statemachine.TRANSITIONS), the
# `jobstate.transitions` package (its callback transitions, issue 18, in a submodule).
JOB_WRITER = "jobstate.transitions"


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.with_suffix("").relative_to(PACKAGE.parent).parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = modules()


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _resolve(name: str, path: Path, node: ast.ImportFrom) -> str:
    base = _package_of(name, path).split(".")
    if node.level > 1:
        base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names imported from it, line) for every import in the module,
    at any depth (function bodies included)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names
                    if a.name.split(".")[0] == "jobstate"]
        elif isinstance(node, ast.ImportFrom):
            target = (_resolve(name, path, node) if node.level
                      else node.module or "")
            if target.split(".")[0] != "jobstate":
                continue
            names = [a.name for a in node.names]
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            if submodules:
                out += [(m, [], node.lineno) for m in submodules]
                names = [n for n in names if f"{target}.{n}" not in MODULES]
            if names or not submodules:
                out.append((target, names, node.lineno))
    return out


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in MODULES.items():
        for target, _, _ in imports(name, path):
            if target in MODULES and target != name:
                edges[name].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    nodes = set(edges) | {w for targets in edges.values() for w in targets}
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycle() -> None:
    assert cycles(graph()) == []


def test_the_cycle_check_can_fail() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_reaches() -> list[str]:
    """Every place a module imports, or reads as an attribute, another module's private
    name (or gets one with getattr and a literal)."""
    found = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        aliases: dict[str, str] = {}  # local name -> jobstate module it stands for
        for target, names, line in imports(name, path):
            for n in names:
                if _private(n) and target != name:
                    found.append(f"{name}:{line} imports {target}.{n}")
            if target in MODULES and not names:
                aliases[target.rpartition(".")[2]] = target
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and _private(node.attr)):
                found.append(f"{name}:{node.lineno} reads {aliases[node.value.id]}.{node.attr}")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id == "getattr" and len(node.args) >= 2
                    and isinstance(node.args[1], ast.Constant)
                    and isinstance(node.args[1].value, str) and _private(node.args[1].value)):
                found.append(f"{name}:{node.lineno} getattr(..., {node.args[1].value!r})")
    return found


def test_no_module_reaches_into_another_modules_private_names() -> None:
    assert private_reaches() == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_over_about_500_lines(name: str) -> None:
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines; split it by concept"


JOB_KEY_BUILDERS = {"job_key"}
WRITE_OPS = {"update_item", "put_item", "delete_item", "update", "put", "delete"}


def job_item_writes() -> list[str]:
    """Places outside the transitions package that address a write (or a transaction
    action) to a job item: a call that writes, or an action dict, keyed by
    `schema.job_key(...)`."""
    return [f"{name}:{line}" for name, path in MODULES.items()
            if name != JOB_WRITER and not name.startswith(JOB_WRITER + ".")
            for line in writes_in(path.read_text())]


def writes_in(source: str) -> list[int]:
    """The lines of `source` that address a write to a job item."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            op = (node.args[0].value if node.args and isinstance(node.args[0], ast.Constant)
                  else None)
            method = node.func.attr if isinstance(node.func, ast.Attribute) else None
            writes = op in WRITE_OPS or method in WRITE_OPS
            keyed = any(_is_job_key(a) for a in [*node.args, *(k.value for k in node.keywords)])
            if writes and keyed:
                found.append(node.lineno)
        if isinstance(node, ast.Dict):
            keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
            action = bool(keys & {"Update", "Delete", "ConditionCheck"}) and any(
                _is_job_key(v) for v in ast.walk(node))
            request = ("Key" in keys and bool(keys & {"UpdateExpression", "ConditionExpression"})
                       and any(_is_job_key(v) for v in node.values if v is not None))
            if action or request:
                found.append(node.lineno)
    return sorted(set(found))


def _is_job_key(node: ast.AST) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            in JOB_KEY_BUILDERS)


def test_only_transitions_writes_a_job_item() -> None:
    assert job_item_writes() == []


def test_the_job_write_check_can_fail() -> None:
    source = (
        "store.update(schema.job_key(j), upd)\n"
        "store.call('update_item', Key=schema.job_key(j), UpdateExpression='SET a = :a')\n"
        "actions = [{'Update': {'Key': job_key(j), 'UpdateExpression': 'SET a = :a'}}]\n"
        "store.get_item(schema.job_key(j))\n"  # a read: allowed
    )
    assert writes_in(source) == [1, 2, 3]
