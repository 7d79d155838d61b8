"""The layering anyone can see: the library imports no orchestration or tracking package, and
its modules import each other without cycles (read from the source, nothing is imported)."""
from __future__ import annotations

import ast
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[1] / "lifelong_diffusion"
FORBIDDEN = {"prefect", "dvc", "mlflow"}


def module_name(path: Path) -> str:
    parts = path.relative_to(LIBRARY.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Absolute names of everything `path` imports (lazy and type-checking imports too)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found |= {target} | {f"{target}.{a.name}" for a in node.names}
    return found


GRAPH = {module_name(p): imports(p) for p in LIBRARY.rglob("*.py")}


def test_library_imports_no_orchestration_or_tracking():
    bad = {m: sorted(n for n in deps if n.split(".")[0] in FORBIDDEN) for m, deps in GRAPH.items()}
    assert not {m: names for m, names in bad.items() if names}


def test_library_has_no_import_cycles():
    edges = {m: {d for d in deps if d in GRAPH and d != m} for m, deps in GRAPH.items()}
    done, path = set(), []

    def visit(module):
        assert module not in path, " -> ".join(path[path.index(module):] + [module])
        if module in done:
            return
        path.append(module)
        for dep in edges[module]:
            visit(dep)
        path.pop()
        done.add(module)

    for module in edges:
        visit(module)
