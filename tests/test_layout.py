"""The package's layout (docs/architecture.md): its parts in layers, each importing only
from the layers before it, and no module that imports one importing it back, at the top of
a file or inside a function."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
# docs/architecture.md's list, first to last: a part may import only from earlier layers
LAYERS = [{"mar", "errors", "atomic", "constants"}, {"distribution"}, {"masking"}, {"models"},
          {"losses", "flops"}, {"data"}, {"config"}, {"runtime"}, {"inference"}, {"engine"},
          {"convert"}, {"serve"}, {"recipe", "demo"}, {"cli"}, {"__main__"}]


def import_graph() -> dict[str, set[str]]:
    """Module -> the mar modules it imports anywhere in its file."""
    modules = {}
    for f in (SRC / "mar").rglob("*.py"):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    graph = {}
    for name, f in modules.items():
        package = name.split(".") if f.name == "__init__.py" else name.split(".")[:-1]
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package[:len(package) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    deps.add(sub if sub in modules else target)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph``, or None."""
    state: dict[str, int] = {}          # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep, [*path, dep])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_package_has_no_import_cycles():
    graph = import_graph()
    assert {"mar.cli.predict", "mar.inference.score", "mar.data.windows"} <= set(graph)
    assert cycle(graph) is None, " -> ".join(cycle(graph))


def test_every_part_imports_only_from_the_layers_before_it():
    layer = {part: i for i, parts in enumerate(LAYERS) for part in parts}
    wrong = []
    for module, deps in import_graph().items():
        part = module.split(".")[1] if "." in module else "mar"
        assert part in layer, f"{module}: add its part to LAYERS and docs/architecture.md"
        for dep in deps:
            other = dep.split(".")[1] if "." in dep else "mar"
            if other != part and layer[other] >= layer[part]:
                wrong.append(f"{module} imports {dep}")
    assert wrong == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None
