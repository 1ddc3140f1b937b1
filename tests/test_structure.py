"""simcore's modules import one way: the graph of their imports of each other (every import
statement, inside functions too) has no cycle. Read from the sources with ast; nothing is
imported."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "simcore"


def module_names() -> dict:
    """{"simcore.model": path, ...}, with "simcore" for the package's __init__.py, and the
    compiled modules (simcore._kernels, from a .pyx: it imports none of these)."""
    return {("simcore" if p.stem == "__init__" else f"simcore.{p.stem}"): p
            for p in sorted(PACKAGE.glob("*.py")) + sorted(PACKAGE.glob("*.pyx"))}


def imported_modules(tree: ast.AST, importer: str, modules) -> set:
    """The simcore modules ``tree`` imports. `from simcore import x` imports the module
    simcore.x if there is one, else a name of the package (its __init__); the package a
    module belongs to, which Python runs first, does not count as imported by it."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from . import x, from .model import SIM (simcore has no subpackages)
                base = "simcore" + (f".{base}" if base else "")
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # simcore.model.SIM -> simcore.model
                target = target.rpartition(".")[0]
            if target:
                found.add(target)
    return found - {importer}


def import_graph() -> dict:
    modules = module_names()
    return {name: imported_modules(ast.parse(path.read_text(), str(path)), name, modules)
            if path.suffix == ".py" else set() for name, path in modules.items()}


def find_cycle(graph: dict):
    """One cycle as [a, b, ..., a], or None. Depth-first, with the path on a stack."""
    done, on_path = set(), []

    def visit(node):
        if node in on_path:
            return on_path[on_path.index(node):] + [node]
        if node in done:
            return None
        on_path.append(node)
        for nxt in sorted(graph.get(node, ())):
            cycle = visit(nxt)
            if cycle:
                return cycle
        on_path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start)
        if cycle:
            return cycle
    return None


def test_the_graph_reads_imports_of_every_kind():
    modules = {"simcore", "simcore.a", "simcore.b", "simcore.c", "simcore.d", "simcore.e"}
    source = ("import simcore.a\nfrom simcore import b, Config\nfrom .c import thing\n"
              "def f():\n    from simcore.d import g  # inside a function\n"
              "class K:\n    def m(self):\n        import simcore.e as e\n"
              "import os\nfrom numpy import zeros\n")
    assert imported_modules(ast.parse(source), "simcore.x", modules) == modules


def test_the_cycle_finder_names_the_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_simcore_modules_import_each_other_one_way():
    graph = import_graph()
    assert {"simcore", "simcore.model", "simcore.checkpoint", "simcore.train"} <= set(graph)
    assert "simcore.model" in graph["simcore.checkpoint"]  # the graph is not empty by mistake
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
