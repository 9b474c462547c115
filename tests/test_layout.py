"""The package's layout stays readable: no import circles between its modules, no module past
one sitting's read, and command modules that only parse flags and call a function."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mrnet_ray"
MAX_LINES = 400
COMMANDS = ("prepare", "train", "tune", "best", "predict", "serve", "ui")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_at_load(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports when it is loaded: module-level imports, outside
    ``if TYPE_CHECKING:`` (imports inside functions run later and cannot close a circle at
    load time)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(node.test):
                    visit(node.body + node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body + node.orelse + node.finalbody)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)

    visit(ast.parse(path.read_text()).body)
    return {m for m in found if m in modules and m != name}


def test_no_import_circles():
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: imported_at_load(path, set(files)) for name, path in files.items()}
    done: set[str] = set()

    def walk(name: str, trail: list[str]) -> None:
        if name in trail:
            raise AssertionError(
                "import circle: " + " -> ".join([*trail[trail.index(name) :], name])
            )
        if name in done:
            return
        for other in sorted(graph[name]):
            walk(other, [*trail, name])
        done.add(name)

    for name in sorted(graph):
        walk(name, [])


def test_no_module_past_one_sitting():
    long = {
        str(p.relative_to(PACKAGE.parent)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}, f"split these by concern (over {MAX_LINES} lines): {long}"


def test_command_modules_are_thin():
    for command in COMMANDS:
        source = (PACKAGE / f"{command}.py").read_text()
        tree = ast.parse(source)
        defs = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)]
        assert len(source.splitlines()) <= 200, command
        assert not [n.name for n in defs if isinstance(n, ast.ClassDef)], command
