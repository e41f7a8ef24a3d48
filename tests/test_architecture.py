"""The package's shape: rooms whose imports flow one way, no import circle (not even through imports inside
functions), torch and its stack imported only under ``duckdb_ft/ml``, and a light start-up for plain SQL."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "duckdb_ft"
HEAVY = {"torch", "transformers", "peft", "safetensors", "accelerate", "datasets"}

#: Each room's rank: a module may import its own room or a room of lower rank, never a higher one or a sibling.
RANKS = {"errors": 0, "options": 0.5, "queries": 0.5, "catalog": 1, "governance": 2, "ml": 2, "prep": 2.7, "jobs": 3,
         "evaluation": 3.5, "surface": 4, "__init__": 5, "integrations": 5.5, "server": 5.5, "dbt": 5.5, "shell": 6,
         "demo": 7, "cli": 8, "__main__": 9}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every duckdb_ft module ``name`` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):  # type-only imports (under ``if TYPE_CHECKING:``) run nothing: not edges
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m in modules and m != name}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_every_module_belongs_to_a_room_with_a_docstring_and_stays_small():
    for name, path in _modules().items():
        assert _room(name) in RANKS, f"{name} is in no known room: add it to RANKS and the README's layout"
        tree = ast.parse(path.read_text())
        assert ast.get_docstring(tree), f"{name} has no docstring saying what it holds"
        lines = len(path.read_text().splitlines())
        assert lines <= 420, f"{name} has {lines} lines: split it by concept"


def test_imports_flow_one_way_between_rooms():
    graph = _graph()
    wrong = []
    for src, targets in graph.items():
        for dst in targets:
            rs, rd = _room(src), _room(dst)
            if rd == "__init__" and dst == "duckdb_ft" and rs in ("shell", "demo", "cli"):
                continue  # the UI layers use the public API
            if rs != rd and not RANKS[rs] > RANKS[rd]:
                wrong.append(f"{src} -> {dst}")
    assert not wrong, "imports against the flow (shell > surface > jobs > ml, governance > catalog > base):\n" + \
        "\n".join(sorted(wrong))


def test_no_import_circle_even_through_imports_inside_functions():
    graph = _graph()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt == node.rpartition(".")[0] or node.startswith(nxt + "."):
                continue  # a module reaching its own package's __init__ (shared helpers) is not a circle
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_torch_transformers_and_peft_are_imported_only_under_ml():
    for name, path in _modules().items():
        if _room(name) == "ml":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            heavy = {n.split(".")[0] for n in names} & HEAVY
            assert not heavy, f"{name} imports {heavy}: model code belongs in duckdb_ft/ml"


LIGHT_SESSION = """
import sys
import duckdb_ft
con = duckdb_ft.connect()
con.execute("CREATE TABLE t AS SELECT 1 AS x")
assert con.execute("SELECT x FROM t").fetchall() == [(1,)]
con.execute("CREATE ROLE analyst")
con.execute("GRANT SELECT ON TABLE t TO ROLE analyst")
assert con.execute("SELECT count(*) FROM finetune('SHOW')").fetchall() == [(0,)]
user = duckdb_ft.connect(None, user="u1")
assert user.execute("SELECT 41 + 1").fetchall() == [(42,)]
from duckdb_ft.cli import main
assert main(["-c", "SELECT 1"]) == 0
loaded = sorted(m for m in {"torch", "transformers", "peft"} if m in sys.modules)
print("LOADED", loaded)
"""


def test_connect_plain_sql_and_the_shell_load_no_torch():
    run = subprocess.run([sys.executable, "-c", LIGHT_SESSION], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "LOADED []" in run.stdout, run.stdout[-500:]


FRESH_IMPORTS = """
import importlib, sys
for module in sys.argv[1:]:
    for name in [m for m in sys.modules if m == "duckdb_ft" or m.startswith("duckdb_ft.")]:
        del sys.modules[name]  # each module first, on its own: an import circle fails here whatever the order
    importlib.import_module(module)
print("OK", len(sys.argv) - 1)
"""


@pytest.mark.slow
def test_every_module_imports_first_on_its_own():
    modules = sorted(m for m in _modules() if not m.endswith("__main__"))
    run = subprocess.run([sys.executable, "-c", FRESH_IMPORTS, *modules], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"OK {len(modules)}" in run.stdout


def _layout_sections() -> dict[str, str]:
    """The README's Layout block, split by room: ``{"ml": "...text of its entry...", "__init__": top-level lines}``."""
    readme = (PACKAGE.parent / "README.md").read_text()
    block = readme[readme.index("## Layout"):]
    block = block[block.index("```\nduckdb_ft/") + 4:]
    block = block[:block.index("```")]
    sections: dict[str, list[str]] = {"__init__": []}
    current = "__init__"
    for line in block.splitlines()[1:]:
        if not line.startswith("  "):
            break  # sql/, notebooks/, ...: outside the package
        head = line[2:].split(" ", 1)[0] if not line.startswith("   ") else ""
        if head.endswith("/"):
            current = head[:-1]
            sections[current] = []
        elif head.endswith(".py"):
            current = "__init__"
        sections[current].append(line)
    return {room: "\n".join(lines) for room, lines in sections.items()}


def test_the_readme_layout_names_every_module_in_its_room():
    sections = _layout_sections()
    missing = []
    for name, path in _modules().items():
        if path.name == "__init__.py" and name != "duckdb_ft":
            continue  # a room's own __init__ holds its shared helpers, named by the room's entry
        room = _room(name)
        text = sections.get(room if path.parent != PACKAGE else "__init__", "")
        if not re.search(rf"(?<![\w/]){re.escape(path.name)}", text):
            missing.append(f"{path.relative_to(PACKAGE.parent)}")
    assert not missing, "README's Layout does not name (in its room's entry): " + ", ".join(sorted(missing))


def test_the_ml_package_docstring_names_every_ml_module():
    doc = ast.get_docstring(ast.parse((PACKAGE / "ml" / "__init__.py").read_text()))
    missing = [p.stem for p in (PACKAGE / "ml").glob("*.py") if p.stem != "__init__" and f":mod:`.{p.stem}`" not in doc]
    assert not missing, f"duckdb_ft/ml/__init__.py's docstring does not name: {', '.join(sorted(missing))}"


#: Parameters that always hold one of the package's own classes: typed as that class, never ``Any``.
OWN_CLASSES = {"session": "Session", "engine": "Engine", "runner": "JobRunner", "loaded": "LoadedModel"}


def test_the_packages_own_classes_are_typed_not_any():
    untyped = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for arg in node.args.args + node.args.kwonlyargs:
                    if arg.arg in OWN_CLASSES and (arg.annotation is None or "Any" in ast.unparse(arg.annotation)):
                        untyped.append(f"{name}.{node.name}({arg.arg})")
    assert not untyped, "type these as the package's class (under `if TYPE_CHECKING:` where the room is higher):\n" \
        + "\n".join(sorted(untyped))


def test_type_only_imports_name_what_exists():
    """An import under ``if TYPE_CHECKING:`` runs nowhere but in a type checker: check it names a real class."""
    import importlib

    for name, path in _modules().items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"):
                continue
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom), f"{name}: only `from ... import ...` under TYPE_CHECKING"
                module = importlib.import_module("." * imp.level + (imp.module or ""), package if imp.level else None)
                for alias in imp.names:
                    assert hasattr(module, alias.name), f"{name} imports {alias.name} from {module.__name__}: none"


def test_test_modules_share_helpers_through_conftest_only():
    """A test module imports no other test module (shared fixtures and helpers live in tests/conftest.py), and
    every marker a test uses is registered in pyproject.toml (pytest's --strict-markers is not on)."""
    tests = Path(__file__).resolve().parent
    names = {p.stem for p in tests.glob("test_*.py")}
    pyproject = (PACKAGE.parent / "pyproject.toml").read_text()
    offenders, unregistered = [], set()
    for path in sorted(tests.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                offenders += [f"{path.name}: import {a.name}" for a in node.names if a.name in names]
            elif isinstance(node, ast.ImportFrom) and node.module in names:
                offenders.append(f"{path.name}: from {node.module} import ...")
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) \
                    and isinstance(node.value.value, ast.Name) and node.value.value.id == "pytest" \
                    and node.value.attr == "mark" and node.attr not in ("parametrize", "skipif", "skip", "xfail",
                                                                        "usefixtures", "filterwarnings"):
                if f'"{node.attr}:' not in pyproject:
                    unregistered.add(f"{path.name}: pytest.mark.{node.attr}")
    assert not offenders, offenders
    assert not unregistered, sorted(unregistered)


def test_the_readmes_ways_in_point_at_sections_and_tests_that_exist():
    readme = (PACKAGE.parent / "README.md").read_text()
    table = readme[readme.index("## Ways in"):].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith(("| from", "| ---"))]
    slugs = {re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-")
             for h in re.findall(r"^#{2,3} (.+)$", readme, re.M)}
    assert len(rows) >= 9
    for row in rows:
        anchors, tests = re.findall(r"\]\(#([^)]+)\)", row), re.findall(r"`(tests/[^`]+\.py)`", row)
        assert anchors and tests, f"a way in without its section or its test: {row}"
        assert set(anchors) <= slugs, f"no README section for {anchors}"
        assert all((PACKAGE.parent / t).exists() for t in tests), f"no such test file in {row}"
