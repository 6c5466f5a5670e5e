"""The package's layers: what each part may import (function-level imports count too). Erasing does not depend on
attacking or evaluating; the MiniCanvas world does not depend on how it is evaluated; the bottom helpers depend
on nothing above them."""

import ast
import graphlib
from pathlib import Path

import pytest

import hirm

PACKAGE = Path(hirm.__file__).parent

# part -> parts of hirm it must never import
FORBIDDEN = {
    "hirm.ui": {"hirm.cli", "hirm.bench"},  # the page sits beside the command line, on the library
    "hirm.eval": {"hirm.cli", "hirm.bench", "hirm.ui"},
    "hirm.erase": {"hirm.attacks", "hirm.eval", "hirm.cli", "hirm.bench", "hirm.ui"},
    "hirm.attacks": {"hirm.eval", "hirm.cli", "hirm.bench", "hirm.ui"},
    "hirm.minicanvas": {"hirm.attacks", "hirm.eval", "hirm.erase", "hirm.cli", "hirm.bench", "hirm.ui"},
    "hirm.tokens": {"hirm.attacks", "hirm.eval", "hirm.erase", "hirm.encoders", "hirm.patch", "hirm.cli"},
    "hirm.errors": {"hirm"},
    "hirm.compat": {"hirm"},
    "hirm.registry": {"hirm.attacks", "hirm.eval", "hirm.erase", "hirm.minicanvas", "hirm.encoders", "hirm.patch",
                      "hirm.tokens", "hirm.io", "hirm.generate", "hirm.cli"},
    "hirm.io": {"hirm.attacks", "hirm.eval", "hirm.erase", "hirm.minicanvas", "hirm.encoders", "hirm.patch"},
    "hirm.export": {"hirm.attacks", "hirm.cli", "hirm.bench", "hirm.ui"},
    "hirm.generate": {"hirm.attacks", "hirm.eval", "hirm.erase", "hirm.minicanvas", "hirm.cli"},
}


def part(module: str) -> str:
    """hirm.erase.hirm -> hirm.erase (the first level below the package)."""
    return ".".join(module.split(".")[:2])


def imports_of(path: Path, known: frozenset[str] = frozenset()) -> set[str]:
    """The hirm modules `path` imports; `from hirm.x import y` counts as hirm.x.y where that is a module in
    `known`."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                       for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m == "hirm" or m.startswith("hirm.")}


def modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(("hirm", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        out.append((name, path))
    return out


@pytest.mark.parametrize("owner", sorted(FORBIDDEN))
def test_no_wrong_way_imports(owner):
    wrong = []
    for name, path in modules():
        if part(name) != owner:
            continue
        for imported in imports_of(path):
            for banned in FORBIDDEN[owner]:
                if imported == banned or (imported.startswith(banned + ".") and part(imported) != owner):
                    wrong.append(f"{name} imports {imported}")
    assert not wrong, "\n".join(wrong)


def test_the_walk_sees_function_level_imports(tmp_path):
    # a wrong-way import hidden inside a function is still an import
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from hirm.attacks.paraphrase import ParaphraseConfig\n")
    assert imports_of(src) == {"hirm.attacks.paraphrase"}


def import_order(found: dict[str, Path]) -> tuple[str, ...]:
    """The modules in an order where each comes after what it imports; graphlib.CycleError on a cycle."""
    known = frozenset(found)
    graph = {name: imports_of(path, known) - {name} for name, path in found.items()}
    return tuple(graphlib.TopologicalSorter(graph).static_order())


def test_no_import_cycles():
    """Module by module (a package counts as its __init__), function-level imports included."""
    try:
        import_order(dict(modules()))
    except graphlib.CycleError as e:
        pytest.fail(f"import cycle: {' -> '.join(e.args[1])}")


def test_the_cycle_check_sees_a_cycle_through_a_function_level_import(tmp_path):
    (tmp_path / "a.py").write_text("from hirm.b import g\n")
    (tmp_path / "b.py").write_text("def g():\n    from hirm import a\n")
    found = {"hirm.a": tmp_path / "a.py", "hirm.b": tmp_path / "b.py"}
    with pytest.raises(graphlib.CycleError):
        import_order(found)


def terminal_output_in(path: Path) -> list[str]:
    """Where a module writes to the terminal itself: print(), typer, rich's Console."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
            found.append(f"print() at line {node.lineno}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("typer", "rich"):
            found.append(f"from {node.module} import at line {node.lineno}")
        elif isinstance(node, ast.Import) and any(a.name.split(".")[0] in ("typer", "rich") for a in node.names):
            found.append(f"import typer/rich at line {node.lineno}")
    return found


def test_the_library_logs_and_the_cli_decides_what_the_terminal_shows():
    """No print, typer or rich outside the command line (`cli/`, and `bench.py`, `hirm bench`'s own report):
    library code logs (`logging.getLogger(__name__)`) and returns what it measured."""
    for name, path in modules():
        if name.startswith("hirm.cli") or name == "hirm.bench":
            continue
        assert not terminal_output_in(path), f"{name}: {terminal_output_in(path)}"


def test_the_terminal_check_sees_a_print(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from rich.console import Console\n    print(1)\n")
    assert len(terminal_output_in(src)) == 2


def function_level_hirm_imports(path: Path) -> list[str]:
    """`from hirm... import` statements inside a function or class body of `path`, as "line: module"."""
    out = {}  # by line: an import in a nested function is walked from each enclosing one
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and inner.module and inner.module.startswith("hirm"):
                    out[inner.lineno] = f"{inner.lineno}: {inner.module}"
                elif isinstance(inner, ast.Import) and any(a.name.split(".")[0] == "hirm" for a in inner.names):
                    out[inner.lineno] = f"{inner.lineno}: hirm"
    return [out[line] for line in sorted(out)]


def test_hirm_imports_sit_at_module_top():
    """The ties between hirm's modules are read at the top of each file. Local imports are for optional
    third-party dependencies only (peft, nudenet, ...); `hirm/__init__`'s Ctrl-C handler, installed before torch
    is imported (and the CLI's `main`, which installs it), is the one hirm exception."""
    local = {name: found for name, path in modules() if (found := function_level_hirm_imports(path))}
    assert all(f.endswith(": hirm._signals") for found in local.values() for f in found), local


def test_the_top_import_check_sees_a_local_import(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from hirm.patch import Patch\n    def g():\n        import hirm\n    return Patch\n")
    assert function_level_hirm_imports(path) == ["2: hirm.patch", "4: hirm"]
