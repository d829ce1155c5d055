"""The rooms of the house keep their rules (docs/architecture.md): no import circles, nothing imports upward, SQL
only in ledger/, no test seams read by pisweep, small modules, and no torch on the orchestration path.

The import graph is read from the source (every ``import``, function-local ones included), not from what
happens to be imported at run time."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pisweep"
MAX_LINES = 400

#: What each room may import (besides itself). A module at the top level is its own room.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "states": set(),
    "atomic": {"errors"},
    "models": {"errors", "atomic"},
    "testing": {"job"},
    "job": {"errors", "atomic", "states"},
    "data": {"errors", "atomic"},
    "study": {"errors", "atomic", "states", "job.paths", "data", "eval.registry"},
    "eval": {"errors", "atomic", "models", "job"},
    "train": {"errors", "atomic", "models", "job", "data", "study"},
    "ledger": {"errors", "atomic", "states", "job", "study", "eval.registry"},
    "runner": {"errors", "atomic", "states", "models", "job", "train", "eval", "data", "study"},
    "executors": {"errors", "atomic", "states", "job", "ledger", "study", "runner", "eval.registry"},
    "report": {"errors", "atomic", "states", "job.paths", "ledger", "study", "eval.registry"},
    "commands": {"errors", "atomic", "states", "job", "ledger", "study", "executors", "report", "eval.registry", "data"},
    "cli": {"errors", "atomic", "states", "job", "ledger", "study", "executors", "report", "eval", "data", "commands"},
}


@dataclass(frozen=True)
class Arrow:
    source: str
    target: str
    line: int
    type_only: bool  # under ``if TYPE_CHECKING:``


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def arrows(mods: dict[str, Path]) -> list[Arrow]:
    """Every import of one pisweep module by another, resolved to the module it names."""

    def known(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    out = []
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        typed = _type_checking_lines(tree)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                resolved = known(t) if t.startswith("pisweep") else None
                if resolved and resolved != name and resolved != "pisweep":
                    out.append(Arrow(name, resolved, node.lineno, node.lineno in typed))
    return out


def circles(mods: dict[str, Path], edges: list[Arrow]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for a in edges:
        graph[a.source].add(a.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def room(module: str) -> str:
    return module.removeprefix("pisweep.").split(".")[0]


def allowed(source: str, target: str) -> bool:
    src, dst = room(source), room(target)
    if src == dst:
        return True
    rules = ALLOWED[src]
    rest = target.removeprefix("pisweep.")
    return dst in rules or any(rest == r or rest.startswith(r + ".") for r in rules)


# -- the checks ------------------------------------------------------------------------------------------------------
def test_the_graph_reader_sees_circles_and_upward_arrows():
    """The checks below can fail: a planted circle and a planted upward arrow are found."""
    mods = {"pisweep.a": Path("a"), "pisweep.b": Path("b"), "pisweep.c": Path("c")}
    edges = [Arrow("pisweep.a", "pisweep.b", 1, False), Arrow("pisweep.b", "pisweep.a", 9, False),
             Arrow("pisweep.b", "pisweep.c", 2, False)]
    assert circles(mods, edges) == [["pisweep.a", "pisweep.b"]]
    assert not allowed("pisweep.job.events", "pisweep.ledger.db")
    assert not allowed("pisweep.study.plan", "pisweep.executors.slurm")
    assert allowed("pisweep.study.spec", "pisweep.eval.registry") and not allowed("pisweep.study.x", "pisweep.eval.evaluator")
    real = arrows(modules())
    assert any(a.source == "pisweep.runner.run" and a.target == "pisweep.train.stage2" for a in real), \
        "function-local imports are read"


def test_no_import_circles():
    mods = modules()
    assert circles(mods, arrows(mods)) == []


def test_every_room_imports_only_what_it_may():
    mods = modules()
    assert {room(m) for m in mods if m != "pisweep"} <= set(ALLOWED), "a new room needs its rule here"
    wrong = [f"{a.source}:{a.line} imports {a.target}" for a in arrows(mods)
             if not a.type_only and not allowed(a.source, a.target)]
    assert wrong == []


def test_sql_only_in_the_ledger():
    sql = re.compile(r"\b(SELECT\b[\s\S]*\bFROM|INSERT\s+INTO|DELETE\s+FROM|UPDATE\s+\w+\s+SET|CREATE\s+(TABLE|INDEX))\b")
    found = []
    for name, path in modules().items():
        if room(name) == "ledger":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                found += [f"{name}:{node.lineno} imports {n}" for n in names if n.split(".")[0] in ("sqlalchemy", "sqlite3")]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and sql.search(node.value):
                found.append(f"{name}:{node.lineno} holds SQL")
    assert found == []


def test_pisweep_reads_no_test_switches():
    assert [n for n, p in modules().items() if "PISWEEP_TEST" in p.read_text()] == []


def test_no_module_over_the_limit():
    sizes = {n: len(p.read_text().splitlines()) for n, p in modules().items()}
    assert {n: s for n, s in sizes.items() if s > MAX_LINES} == {}


@pytest.mark.parametrize("module", ["pisweep.cli.main", "pisweep.commands.session", "pisweep.commands.status",
                                    "pisweep.executors.local", "pisweep.executors.slurm", "pisweep.report.build",
                                    "pisweep.runner.slurm", "pisweep.runner.entry"])
def test_orchestration_does_not_import_torch(module):
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'open_clip') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def state_names_compared() -> dict[str, set[str]]:
    """Every string pisweep compares with a state or an outcome (``x.state == "..."``, ``state in (...)``, and
    ``state = '...'`` / ``state IN (...)`` in SQL), by module."""
    sql = re.compile(r"\b(?:state|outcome)\s*(?:=|!=)\s*'(\w+)'|\b(?:state|outcome)\s+(?:NOT\s+)?IN\s*\(([^)]*)\)", re.I)
    found: dict[str, set[str]] = {}
    for name, path in modules().items():
        tree = ast.parse(path.read_text())
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                stateish = re.compile(r"\b(state|outcome|last)\b|\[\"state\"\]")
                sides = [node.left, *node.comparators]
                if isinstance(node.ops[0], (ast.In, ast.NotIn)):  # `state in (...)`, not `"key" in state_dict`
                    sides = node.comparators if stateish.search(ast.unparse(node.left)) else []
                elif not any(stateish.search(ast.unparse(x)) for x in sides):
                    sides = []
                for side in sides:
                    items = side.elts if isinstance(side, (ast.Tuple, ast.Set, ast.List)) else [side]
                    names |= {i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)}
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                for single, listed in sql.findall(node.value):
                    names |= {single} if single else set(re.findall(r"'(\w+)'", listed))
        if names:
            found[name] = names
    return found


def test_one_vocabulary_of_states():
    from pisweep.states import ATTEMPT_OUTCOMES, EVAL_STATES, JOB_STATES

    vocabulary = set(JOB_STATES) | set(ATTEMPT_OUTCOMES) | set(EVAL_STATES)
    found = state_names_compared()
    assert sum(map(len, found.values())) > 20, "the scan sees the comparisons"
    unknown = {m: sorted(n - vocabulary) for m, n in found.items() if n - vocabulary}
    assert unknown == {}
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text().split("## States", 1)[1].split("\n## ", 1)[0]
    assert [s for s in sorted(vocabulary) if s not in text] == [], "docs/architecture.md's States names every state"
