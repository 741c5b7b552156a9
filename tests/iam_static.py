"""What each Lambda function can ask of DynamoDB and KMS, derived from the code.

`derive()` type-checks `jobstate/` and `handlers/` with mypy (its semantic model tells
what every call resolves to) and builds a call graph; `needs_of_handler(...)` walks it
from a function's entry point (the handler module's import and its `handler`) and
collects the IAM action and resource of every request site it can reach. Nothing is
listed by hand: a new call site, a call that moves to another module, a new transaction
action is found wherever it is.

Request sites:
- a *request primitive* is a function that calls `getattr(<client>, <its parameter>)(...)`
  (today `JobStore.call`); each call of it names the operation with a string literal
  (anything else is an analysis error, so no operation goes unseen);
- a method call on an untyped (`Any`) receiver whose name is a DynamoDB operation
  (`client.get_item(...)`, from botocore's service model);
- a TransactWriteItems request needs the IAM action of every transaction action kind
  (`{"Put": ...}`, `{"Update": ...}`, `{"Delete": ...}`, `{"ConditionCheck": ...}`) that
  reachable code builds: there is no `dynamodb:TransactWriteItems` action;
- a Query or Scan needs the index named by `IndexName` (a literal or module constant, in
  the call or in the dict literal passed as `**kw`), else the table;
- `Cipher.encrypt` / `Cipher.decrypt` (jobstate's one encryption hook) cost
  `kms:GenerateDataKey` / `kms:Decrypt` when the KMS cipher is configured.

Over-approximations (sound, may add needs, never drop one): a function referenced
anywhere in reachable code (called, passed as a callback, stored) is reachable; a class
referenced in reachable code is *live* and all its dunder methods are reachable; a method
call resolves to the definition in the receiver's type and every override in live
subclasses (Rapid Type Analysis), on a Protocol to every live class that defines it, on
an untyped receiver to every live class that defines a method of that name; branches are
not told apart. What it cannot see (a call through `getattr` with a computed name outside
a primitive, an operation name that is not a literal) is reported, not guessed.
`tests/iam_coverage.py` cross-checks it: every request the handler tests make must come
from a site found here and need only what was derived here.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("jobstate", "handlers")

# The AWS services the code talks to through botocore clients. A request to a service not
# listed here has no site in the analysis, so the dynamic cross-check in iam_coverage.py
# fails on it: add the service (and its IAM mapping in `_iam_actions`) then.
SERVICES = ("dynamodb", "lambda", "s3", "sesv2")
TRANSACT_WRITE_KINDS = {"Put": "dynamodb:PutItem", "Update": "dynamodb:UpdateItem",
                        "Delete": "dynamodb:DeleteItem",
                        "ConditionCheck": "dynamodb:ConditionCheckItem"}
TRANSACT_GET_KINDS = {"Get": "dynamodb:GetItem"}
INDEXED_OPS = {"query", "scan"}
CIPHER_CLASS = "jobstate.codec.Cipher"
CIPHER_NEEDS = {"encrypt": "kms:GenerateDataKey", "decrypt": "kms:Decrypt"}
CLIENT_TYPES = ("mypy_boto3_dynamodb.", "botocore.client.")
TABLE = "table"  # resource of an item request; "index/<name>" for an index

Need = tuple[str, str]  # (IAM action, "table" | "index/<name>" | "index/*" | "key" | "*")


class AnalysisError(AssertionError):
    """The code has a request the analysis cannot attribute: fix the code or the analysis."""


@dataclass(frozen=True)
class Site:
    """One place in the code that makes an AWS request."""

    path: str
    line: int
    end_line: int
    unit: str
    service: str  # "dynamodb", "lambda", ... or "kms" (the Cipher hook)
    op: str  # the operation in botocore's snake case ("update_item"), or the IAM action
    resources: frozenset[str] = frozenset({"*"})  # DynamoDB: "table", "index/<name>"
    details: frozenset[str] = frozenset()  # keyword names ("**" for **kw), literal keys

    def where(self) -> str:
        return f"{_rel(self.path)}:{self.line} ({self.unit})"


@dataclass(eq=False)
class Unit:
    """A function body (or a module's top level) and what it refers to."""

    name: str
    path: str
    line: int
    end_line: int
    funcs: set[int] = field(default_factory=set)  # ids of FuncDef units it references
    classes: set[Any] = field(default_factory=set)  # TypeInfos it references
    lookups: set[tuple[Any, str]] = field(default_factory=set)  # (TypeInfo | None, name)
    sites: list[Site] = field(default_factory=list)
    transact_kinds: set[str] = field(default_factory=set)


@functools.cache
def service_ops() -> dict[str, dict[str, str]]:
    """service -> {snake_case operation: API name}, from botocore's service models."""
    import botocore.session
    from botocore import xform_name

    session = botocore.session.get_session()
    return {svc: {xform_name(op): op for op in session.get_service_model(svc).operation_names}
            for svc in SERVICES}


def _iam_actions(service: str, op: str, details: frozenset[str]) -> list[str]:
    """The IAM actions one request needs (where they differ from `service:ApiName`)."""
    api = service_ops()[service][op]
    unknown_kw = "**" in details
    if service == "s3":
        if op in ("get_object", "head_object"):
            versioned = "VersionId" in details or unknown_kw
            return ["s3:GetObject"] + (["s3:GetObjectVersion"] if versioned else [])
        if op in ("list_objects", "list_objects_v2"):
            return ["s3:ListBucket"]
        if op == "list_object_versions":
            return ["s3:ListBucketVersions"]
    if service == "lambda" and op == "invoke":
        return ["lambda:InvokeFunction"]
    if service == "sesv2" and op == "send_email":
        # Simple and templated content need ses:SendEmail; raw MIME needs SendRawEmail.
        raw = "key:Raw" in details or "key:Simple" not in details
        return ["ses:SendEmail"] + (["ses:SendRawEmail"] if raw else [])
    prefix = "ses" if service == "sesv2" else service
    return [f"{prefix}:{api}"]


class Program:
    """The call graph of jobstate + handlers, built once from mypy's semantic model."""

    def __init__(self, root: Path = REPO, packages: tuple[str, ...] = PACKAGES) -> None:
        self.root = root
        self.ops = service_ops()["dynamodb"]
        self.by_name: dict[str, list[str]] = {}  # operation -> the services that have it
        for svc, ops in service_ops().items():
            for op in ops:
                self.by_name.setdefault(op, []).append(svc)
        self.files, self.types, self.deps = _build(root, packages)
        self.units: dict[int, Unit] = {}  # id(FuncDef | MypyFile) -> Unit
        self.classes: dict[str, Any] = {}  # fullname -> TypeInfo of analysed classes
        self.constants: dict[str, str] = {}  # fullname -> value of module-level str constants
        self.errors: list[str] = []
        for f in self.files.values():
            self._index(f)
        self.primitives = self._primitives()
        for f in self.files.values():
            self._collect(f)
        if self.errors:
            raise AnalysisError("the IAM analysis cannot attribute these requests:\n  "
                                + "\n  ".join(self.errors))

    # -- indexing ------------------------------------------------------------------------

    def _index(self, f: Any) -> None:
        from mypy.nodes import AssignmentStmt, NameExpr, StrExpr

        self.units[id(f)] = Unit(f"<module {f.fullname}>", f.path, 1, 1)
        for st in f.defs:
            if (isinstance(st, AssignmentStmt) and isinstance(st.rvalue, StrExpr)
                    and len(st.lvalues) == 1 and isinstance(st.lvalues[0], NameExpr)):
                self.constants[f"{f.fullname}.{st.lvalues[0].name}"] = st.rvalue.value
        for func, qual in _functions(f.defs, f.fullname):
            self.units[id(func)] = Unit(qual, f.path, func.line, func.end_line or func.line)
        for info in _classes(f.defs):
            self.classes[info.fullname] = info

    def _primitives(self) -> dict[int, tuple[str, int]]:
        """FuncDefs that call getattr(x, <parameter>)(...): id -> (parameter, position)."""
        from mypy.nodes import CallExpr, NameExpr

        found: dict[int, tuple[str, int]] = {}
        for f in self.files.values():
            for func, _ in _functions(f.defs, f.fullname):
                params = [a.variable.name for a in func.arguments]
                for call in _walk(func.body, CallExpr):
                    inner = call.callee
                    if (isinstance(inner, CallExpr) and isinstance(inner.callee, NameExpr)
                            and inner.callee.fullname == "builtins.getattr"
                            and len(inner.args) >= 2 and isinstance(inner.args[1], NameExpr)
                            and inner.args[1].name in params):
                        name = inner.args[1].name
                        found[id(func)] = (name, params.index(name))
        return found

    # -- per-unit facts --------------------------------------------------------------------

    def _collect(self, f: Any) -> None:
        _Collector(self, self.units[id(f)], f).accept(f.defs)
        for func, _ in _functions(f.defs, f.fullname):
            _Collector(self, self.units[id(func)], f).accept(func.body)

    # -- resolution ------------------------------------------------------------------------

    def analysed(self, info: Any) -> bool:
        return info.fullname in self.classes

    def members(self, info: Any, name: str) -> list[Any]:
        """The FuncDefs `name` resolves to on an instance of `info` (MRO order: first)."""
        for base in info.mro:
            sym = base.names.get(name)
            if sym is not None and sym.node is not None:
                return _func_defs(sym.node)
        return []

    def resolve(self, info: Any | None, name: str, live: set[Any]) -> list[Any]:
        """Targets of `<receiver>.name` for a receiver typed `info` (None: untyped)."""
        out: list[Any] = []
        if info is None or info.is_protocol:
            for c in live:
                out += self.members(c, name)
            if info is not None:
                out += self.members(info, name)  # a protocol's own default body
            return out
        out += self.members(info, name)
        for c in live:
            if c is not info and info in c.mro:
                out += self.members(c, name)
        return out

    def dunders(self, info: Any) -> list[Any]:
        names = {n for base in info.mro if self.analysed(base) for n in base.names
                 if n.startswith("__") and n.endswith("__")}
        return [d for n in names for d in self.members(info, n)]

    # -- reachability ----------------------------------------------------------------------

    def entry_units(self, handler: str) -> list[Unit]:
        """The units a Lambda runs for `Handler: module.attr`: the import of the handler
        module (with every analysed module it imports) and `attr` if it is a function."""
        module, _, attr = handler.rpartition(".")
        if module not in self.files:
            raise AnalysisError(f"handler module {module!r} is not in {sorted(self.files)}")
        mods, todo = set(), [module]
        while todo:
            m = todo.pop()
            if m in mods or m not in self.files:
                continue
            mods.add(m)
            todo += self.deps.get(m, [])
            parent = m.rpartition(".")[0]  # importing a.b runs a/__init__ first
            if parent:
                todo.append(parent)
        units = [self.units[id(self.files[m])] for m in sorted(mods)]
        sym = self.files[module].names.get(attr)
        if sym is None:
            raise AnalysisError(f"{handler}: no such name in {module}")
        units += [self.units[id(d)] for d in _func_defs(sym.node) if id(d) in self.units]
        return units

    def reachable(self, entries: Iterable[Unit]) -> tuple[dict[int, Unit], dict[int, str]]:
        """Units reachable from `entries`, and for each the unit it was first reached from."""
        key_of = {id(u): k for k, u in self.units.items()}
        seen: dict[int, Unit] = {}
        parent: dict[int, str] = {}
        live: set[Any] = set()
        lookups: dict[tuple[Any, str], str] = {}
        resolved: set[tuple[Any, str, int]] = set()
        queue: deque[tuple[Unit, str]] = deque((u, "") for u in entries)
        while queue:
            while queue:
                unit, via = queue.popleft()
                key = key_of[id(unit)]
                if key in seen:
                    continue
                seen[key], parent[key] = unit, via
                queue.extend((self.units[f], unit.name) for f in unit.funcs)
                for info in unit.classes - live:
                    live.add(info)
                    queue.extend((self.units[id(d)], unit.name) for d in self.dunders(info)
                                 if id(d) in self.units)
                for lk in unit.lookups:
                    lookups.setdefault(lk, unit.name)
            # Virtual calls resolve against the classes live so far; again when more are.
            for (info, name), via in list(lookups.items()):
                if (info, name, len(live)) in resolved:
                    continue
                resolved.add((info, name, len(live)))
                queue.extend((self.units[id(d)], via) for d in self.resolve(info, name, live)
                             if id(d) in self.units and key_of[id(self.units[id(d)])] not in seen)
        return seen, parent

    def needs(self, handler: str) -> dict[Need, list[Site]]:
        """IAM needs of the Lambda entry point `handler`, each with the sites needing it."""
        seen, _ = self.reachable(self.entry_units(handler))
        units = list(seen.values())
        kinds = set().union(*(u.transact_kinds for u in units))
        out: dict[Need, list[Site]] = {}
        for u in units:
            for s in u.sites:
                for need in self._site_needs(s, kinds):
                    out.setdefault(need, []).append(s)
        return out

    def _site_needs(self, s: Site, kinds: set[str]) -> Iterator[Need]:
        if s.service == "kms":
            yield (s.op, "key")
        elif s.service != "dynamodb":
            for action in _iam_actions(s.service, s.op, s.details):
                yield (action, "*")
        elif s.op == "transact_write_items":
            for k in sorted(kinds & set(TRANSACT_WRITE_KINDS)):
                yield (TRANSACT_WRITE_KINDS[k], TABLE)
        elif s.op == "transact_get_items":
            for k in sorted(kinds & set(TRANSACT_GET_KINDS)):
                yield (TRANSACT_GET_KINDS[k], TABLE)
        else:
            for r in sorted(s.resources):
                yield ("dynamodb:" + self.ops[s.op], r)

    def why(self, handler: str, site: Site) -> str:
        """A call chain from the entry point to the unit of `site` (for messages)."""
        seen, parent = self.reachable(self.entry_units(handler))
        names = {u.name: k for k, u in seen.items()}
        chain, name = [site.unit], site.unit
        while name in names and parent.get(names[name]) and len(chain) < 40:
            name = parent[names[name]]
            chain.append(name)
        return " <- ".join(chain)

    def reaches(self, handler: str, qualname: str) -> bool:
        """Whether the function named `qualname` is reachable from `handler`."""
        seen, _ = self.reachable(self.entry_units(handler))
        return any(u.name == qualname for u in seen.values())

    def primitive_spans(self) -> list[tuple[str, int, int]]:
        """(file, first line, last line) of each request primitive."""
        out = []
        for f in self.files.values():
            for func, _ in _functions(f.defs, f.fullname):
                if id(func) in self.primitives:
                    out.append((f.path, func.line, func.end_line or func.line))
        return out

    def sites(self) -> list[Site]:
        return [s for u in self.units.values() for s in u.sites]


class _Collector:
    """Visits one unit's body (not nested function bodies) and records what it uses."""

    def __init__(self, prog: Program, unit: Unit, module: Any) -> None:
        self.prog, self.unit, self.module = prog, unit, module
        self.callees: set[int] = set()

    def accept(self, root: Any) -> None:
        """Visit `root` and what it contains, parents before children (a call is seen
        before its callee), not descending into function bodies (units of their own)."""
        from mypy.nodes import CallExpr, DictExpr, MemberExpr, NameExpr, StrExpr, SuperExpr

        kinds = TRANSACT_WRITE_KINDS.keys() | TRANSACT_GET_KINDS.keys()
        for n in _nodes(root):
            if isinstance(n, CallExpr):
                self.call(n)
            elif isinstance(n, NameExpr):
                self.ref(n.node, n)
            elif isinstance(n, MemberExpr):
                self.member(n)
            elif isinstance(n, SuperExpr):
                self.super_(n)
            elif isinstance(n, DictExpr):
                self.unit.transact_kinds.update(
                    k.value for k, _ in n.items if isinstance(k, StrExpr) and k.value in kinds)

    def super_(self, o: Any) -> None:
        """super().name: the definition after this class in the MRO."""
        if o.info is None:
            return
        for base in o.info.mro[1:]:
            sym = base.names.get(o.name)
            if sym is not None and sym.node is not None:
                self.unit.funcs.update(id(d) for d in _func_defs(sym.node)
                                       if id(d) in self.prog.units)
                return

    def ref(self, node: Any, expr: Any) -> None:
        from mypy.nodes import TypeInfo

        if isinstance(node, TypeInfo):
            if self.prog.analysed(node):
                self.unit.classes.add(node)
            return
        for d in _func_defs(node):
            if id(d) in self.prog.units:
                self.unit.funcs.add(id(d))
                if id(d) in self.prog.primitives and id(expr) not in self.callees:
                    self.prog.errors.append(
                        f"{self._at(expr)}: {d.fullname} is used as a value; call it with "
                        "the operation as a string literal so the analysis can see it")

    def member(self, o: Any) -> None:
        from mypy.nodes import MypyFile, RefExpr

        if o.node is not None:  # module attribute, or a name the analyser bound
            self.ref(o.node, o)
        if isinstance(o.expr, RefExpr) and isinstance(o.expr.node, MypyFile):
            return  # module.attr: nothing virtual about it
        for info in self.receiver_infos(o.expr):
            if info is None or self.prog.analysed(info):
                self.unit.lookups.add((info, o.name))
                if id(o) not in self.callees:
                    for d in self.prog.members(info, o.name) if info is not None else []:
                        if id(d) in self.prog.primitives:
                            self.prog.errors.append(
                                f"{self._at(o)}: {d.fullname} is used as a value; call it "
                                "with the operation as a string literal")

    def receiver_infos(self, expr: Any) -> list[Any]:
        """TypeInfos of an expression's type; [None] for an untyped (Any) receiver."""
        from mypy.types import (
            AnyType,
            CallableType,
            Instance,
            TupleType,
            TypeType,
            UnionType,
            get_proper_type,
        )

        t = self.prog.types.get(expr)
        if t is None:
            return [None]
        todo, out = [get_proper_type(t)], []
        while todo:
            p = get_proper_type(todo.pop())
            if isinstance(p, AnyType):
                out.append(None)
            elif isinstance(p, Instance):
                out.append(p.type)
            elif isinstance(p, UnionType):
                todo += list(p.items)
            elif isinstance(p, TypeType):
                todo.append(p.item)
            elif isinstance(p, TupleType):
                out.append(p.partial_fallback.type)
            elif isinstance(p, CallableType) and p.is_type_obj():
                out.append(p.type_object())
        return out

    def call(self, o: Any) -> None:
        from mypy.nodes import MemberExpr, NameExpr

        callee = o.callee
        self.callees.add(id(callee))
        targets: list[Any] = []
        name = None
        untyped = False
        if isinstance(callee, NameExpr | MemberExpr) and callee.node is not None:
            targets = _func_defs(callee.node)
        if isinstance(callee, MemberExpr) and not targets:
            name = callee.name
            for info in self.receiver_infos(callee.expr):
                if info is None:
                    untyped = True
                    targets += [d for c in self.prog.classes.values()
                                for d in self.prog.members(c, name)]
                elif info.fullname.startswith(CLIENT_TYPES):
                    untyped = True  # a botocore client typed by boto3-stubs
                else:
                    targets += self.prog.resolve(info, name, set(self.prog.classes.values()))
                    if info.fullname == CIPHER_CLASS and name in CIPHER_NEEDS:
                        self.site(o, "kms", CIPHER_NEEDS[name], frozenset({"key"}))
        prims = [self.prog.primitives[id(d)] for d in targets if id(d) in self.prog.primitives]
        if prims:
            self.primitive_call(o, prims[0], isinstance(callee, MemberExpr))
        elif untyped and name is not None:
            for svc in self.prog.by_name.get(name, []):
                resources = self.resources(o, name) if svc == "dynamodb" else frozenset("*")
                self.site(o, svc, name, resources)

    def primitive_call(self, o: Any, prim: tuple[str, int], bound: bool) -> None:
        from mypy.nodes import ARG_NAMED, ARG_POS, StrExpr

        param, pos = prim
        pos -= 1 if bound else 0
        arg = None
        positional = [a for a, k in zip(o.args, o.arg_kinds, strict=True) if k == ARG_POS]
        if 0 <= pos < len(positional):
            arg = positional[pos]
        for a, k, n in zip(o.args, o.arg_kinds, o.arg_names, strict=True):
            if k == ARG_NAMED and n == param:
                arg = a
        if not isinstance(arg, StrExpr):
            self.prog.errors.append(f"{self._at(o)}: the operation is not a string literal")
            return
        if arg.value not in self.prog.ops:
            self.prog.errors.append(f"{self._at(o)}: {arg.value!r} is no DynamoDB operation")
            return
        self.site(o, "dynamodb", arg.value, self.resources(o, arg.value))

    def resources(self, o: Any, op: str) -> frozenset[str]:
        """The table, or the index(es) a Query/Scan names (in the call or its **kw)."""
        from mypy.nodes import ARG_NAMED, ARG_STAR2, NameExpr

        if op not in INDEXED_OPS:
            return frozenset({TABLE})
        out: set[str] = set()
        for a, k, n in zip(o.args, o.arg_kinds, o.arg_names, strict=True):
            if k == ARG_NAMED and n == "IndexName":
                return frozenset({self.index(a)})
            if k == ARG_STAR2:
                if not isinstance(a, NameExpr):
                    return frozenset({TABLE, "index/*"})
                out |= self.dict_indexes(a.name)
        return frozenset(out or {TABLE})

    def dict_indexes(self, var: str) -> set[str]:
        """Indexes named by the dict literals bound to `var` in this unit."""
        from mypy.nodes import AssignmentStmt, DictExpr, IndexExpr, NameExpr, StrExpr

        body = self._body()
        out: set[str] = set()
        literals = 0
        for st in _walk(body, AssignmentStmt):
            for lv in st.lvalues:
                if isinstance(lv, NameExpr) and lv.name == var:
                    if not isinstance(st.rvalue, DictExpr):
                        return {TABLE, "index/*"}
                    literals += 1
                    named = [v for k, v in st.rvalue.items
                             if isinstance(k, StrExpr) and k.value == "IndexName"]
                    out |= {self.index(v) for v in named} or {TABLE}
                if (isinstance(lv, IndexExpr) and isinstance(lv.base, NameExpr)
                        and lv.base.name == var and isinstance(lv.index, StrExpr)
                        and lv.index.value == "IndexName"):
                    out.add(self.index(st.rvalue))
        return out if literals else {TABLE, "index/*"}

    def index(self, expr: Any) -> str:
        from mypy.nodes import MemberExpr, NameExpr, StrExpr

        if isinstance(expr, StrExpr):
            return f"index/{expr.value}"
        if isinstance(expr, NameExpr | MemberExpr) and expr.fullname in self.prog.constants:
            return f"index/{self.prog.constants[expr.fullname]}"
        return "index/*"

    def site(self, o: Any, service: str, op: str, resources: frozenset[str]) -> None:
        from mypy.nodes import ARG_STAR2, DictExpr, StrExpr

        details = {n for n in o.arg_names if n} | {
            "**" for k in o.arg_kinds if k == ARG_STAR2}
        details |= {f"key:{k.value}" for a in o.args if isinstance(a, DictExpr)
                    for k, _ in a.items if isinstance(k, StrExpr)}
        self.unit.sites.append(Site(self.unit.path, o.line, o.end_line or o.line,
                                    self.unit.name, service, op, resources,
                                    frozenset(details)))

    def _body(self) -> Any:
        for func, _ in _functions(self.module.defs, self.module.fullname):
            if self.prog.units.get(id(func)) is self.unit:
                return func.body
        return self.module.defs

    def _at(self, o: Any) -> str:
        return f"{_rel(self.unit.path)}:{o.line} ({self.unit.name})"


# -- helpers ----------------------------------------------------------------------------------


def _rel(path: str) -> str:
    p = Path(path)
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else p.name


def _func_defs(node: Any) -> list[Any]:
    from mypy.nodes import Decorator, FuncDef, OverloadedFuncDef

    if isinstance(node, FuncDef):
        return [node]
    if isinstance(node, Decorator):
        return [node.func]
    if isinstance(node, OverloadedFuncDef):
        out = [d for item in node.items for d in _func_defs(item)]
        return out + (_func_defs(node.impl) if node.impl is not None else [])
    return []


def _functions(defs: Iterable[Any], prefix: str) -> Iterator[tuple[Any, str]]:
    """Every FuncDef under `defs` (methods and nested functions too), with a dotted name."""
    from mypy.nodes import Block, ClassDef, Decorator, FuncDef, OverloadedFuncDef

    for node in _walk_stmts(defs):
        if isinstance(node, ClassDef):
            yield from _functions(node.defs.body, f"{prefix}.{node.name}")
        elif isinstance(node, FuncDef | Decorator | OverloadedFuncDef):
            for d in _func_defs(node):
                qual = f"{prefix}.{d.name}"
                yield d, qual
                yield from _functions(d.body.body, qual)
        elif isinstance(node, Block):
            yield from _functions(node.body, prefix)


def _walk_stmts(defs: Iterable[Any]) -> Iterator[Any]:
    """Statements of a block, descending into if/try/with/for/while bodies."""
    from mypy.nodes import Block, ForStmt, IfStmt, TryStmt, WhileStmt, WithStmt

    for st in defs:
        yield st
        blocks: list[Any] = []
        if isinstance(st, IfStmt):
            blocks = [*st.body, st.else_body]
        elif isinstance(st, TryStmt):
            blocks = [st.body, *st.handlers, st.else_body, st.finally_body]
        elif isinstance(st, ForStmt | WhileStmt):
            blocks = [st.body, st.else_body]
        elif isinstance(st, WithStmt):
            blocks = [st.body]
        for b in blocks:
            if isinstance(b, Block):
                yield from _walk_stmts(b.body)


def _classes(defs: Iterable[Any]) -> Iterator[Any]:
    from mypy.nodes import ClassDef, Decorator, FuncDef

    for node in _walk_stmts(defs):
        if isinstance(node, ClassDef):
            yield node.info
            yield from _classes(node.defs.body)
        elif isinstance(node, FuncDef):
            yield from _classes(node.body.body)
        elif isinstance(node, Decorator):
            yield from _classes(node.func.body.body)


# Attributes of mypy nodes that point back into the semantic model, not down the tree.
_BACK_REFS = frozenset({"node", "info", "def_var", "original_def", "expanded", "var",
                        "def_or_infer_vars", "variable", "type", "unanalyzed_type",
                        "_fullname", "fullname"})


def _children(node: Any) -> list[Any]:
    from mypy.nodes import MypyFile, Node, TypeInfo, Var

    attrs = getattr(type(node), "__mypyc_attrs__", None) or tuple(vars(node))
    out: list[Any] = []
    for a in attrs:
        if a in _BACK_REFS or a.startswith("__"):
            continue
        todo = [getattr(node, a, None)]
        while todo:
            v = todo.pop()
            if isinstance(v, Node) and not isinstance(v, Var | TypeInfo | MypyFile):
                out.append(v)
            elif isinstance(v, list | tuple):
                todo.extend(v)
            elif isinstance(v, dict):
                todo.extend(v.values())
    return out


def _nodes(root: Any) -> Iterator[Any]:
    """`root` (a node or a list of statements) and everything under it, pre-order, not
    entering function bodies (a def runs only its default values and decorators)."""
    from mypy.nodes import FuncDef

    stack = list(reversed(root)) if isinstance(root, list) else [root]
    while stack:
        n = stack.pop()
        yield n
        if isinstance(n, FuncDef):
            stack.extend(a.initializer for a in n.arguments if a.initializer is not None)
            continue
        stack.extend(reversed(_children(n)))


def _walk(node: Any, kind: type) -> Iterator[Any]:
    """Every node of type `kind` under `node`, function bodies included."""
    from mypy.nodes import FuncDef

    stack = list(node) if isinstance(node, list) else [node]
    while stack:
        n = stack.pop()
        if isinstance(n, kind):
            yield n
        stack.extend(n.body.body if isinstance(n, FuncDef) else _children(n))


def _build(root: Path, packages: tuple[str, ...]
           ) -> tuple[dict[str, Any], dict[Any, Any], dict[str, list[str]]]:
    """mypy's semantic model of the packages (third-party imports as Any)."""
    from mypy import build
    from mypy.modulefinder import BuildSource
    from mypy.options import Options

    opts = Options()
    opts.export_types = True
    opts.preserve_asts = True
    opts.incremental = False
    opts.follow_imports = "skip"  # third-party code is typed Any: it is not analysed
    opts.follow_imports_for_stubs = False  # but typeshed and installed stubs are read
    opts.ignore_missing_imports = True
    opts.python_version = (3, 11)
    sources = []
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            sources.append(BuildSource(str(path), ".".join(parts), None))
    result = build.build(sources, opts)
    ours = {s.module for s in sources}
    files = {m: f for m, f in result.files.items() if m in ours}
    deps = {m: [d for d in result.graph[m].dependencies if d in ours] for m in files}
    return files, result.types, deps


@functools.cache
def program() -> Program:
    return Program()


def handler_needs(handler: str) -> dict[Need, list[Site]]:
    return program().needs(handler)
