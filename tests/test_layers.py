"""The layers, read from the source: `components` at the bottom, `pipeline` and `serving` beside each other, the
`iris_tfx` command above them; no import cycle between modules; serving's two transports do not know each other.
Every import counts, also one inside a function."""
import ast
import pathlib
from typing import Dict, List, Optional, Set

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("components", "pipeline", "serving", "iris_tfx")
# What each package may import of the others (itself always).
ALLOWED = {"components": set(), "pipeline": {"components"}, "serving": {"components"},
           "iris_tfx": {"components", "pipeline", "serving"}}
# Modules that must not import each other, in either direction.
APART = [("serving.rest", "serving.grpc_service"), ("serving.rest_api", "serving.grpc_service")]


def project_modules() -> Dict[str, pathlib.Path]:
    """Dotted name -> file of every module of the project's packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _resolve(name: str, modules: Dict[str, pathlib.Path]) -> Optional[str]:
    """The project module `name` stands for (its longest dotted prefix that is one), or None."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, modules: Dict[str, pathlib.Path]) -> Set[str]:
    """Project modules that `module` imports anywhere in its source."""
    path = modules[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, `level - 1` packages up
                base = ".".join(filter(None, [package.rsplit(".", node.level - 1)[0] if node.level > 1 else package,
                                              base]))
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        found.update(filter(None, (_resolve(name, modules) for name in names)))
    found.discard(module)
    return found


def import_graph() -> Dict[str, Set[str]]:
    """Module -> the project modules it imports."""
    modules = project_modules()
    return {module: imports_of(module, modules) for module in modules}


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One import cycle (its modules, the first repeated at the end), or None."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None
    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_packages_import_only_the_layers_below():
    wrong = sorted(f"{module} imports {target}" for module, targets in import_graph().items() for target in targets
                   if target.split(".")[0] != module.split(".")[0]
                   and target.split(".")[0] not in ALLOWED[module.split(".")[0]])
    assert wrong == []


def test_no_import_cycle():
    assert find_cycle(import_graph()) is None


@pytest.mark.parametrize("one, other", APART)
def test_the_transports_do_not_import_each_other(one, other):
    graph = import_graph()
    assert other not in graph[one] and one not in graph[other]


def test_the_checks_see_imports_and_cycles():
    """The reader of imports finds absolute, relative and in-function imports; the cycle finder finds a cycle."""
    graph = import_graph()
    assert {"serving.handlers", "serving.rest_api"} <= graph["serving.server"]
    assert "serving.server" in graph["serving.__main__"]  # imported inside a function
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
