"""The package's modules import each other without a cycle.

The graph is read from the source (ast over fastcustom/**/*.py): every `import` and
`from ... import` of a fastcustom module, at module level or inside a function
(a lazy import still closes a cycle when it runs). `from pkg import name` counts
as an import of `pkg.name` when that is a module, else of `pkg`.
"""

import ast
import pathlib

import fastcustom

PACKAGE = pathlib.Path(fastcustom.__file__).resolve().parent


def _module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules():
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _resolve(module, level, name, is_package):
    """The absolute name of `from <level dots><module> import ...` in module `name`."""
    if level == 0:
        return module
    base = name.split(".") if is_package else name.split(".")[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def import_graph():
    """{module: set of fastcustom modules it imports}."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        edges = set()
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(node.module, node.level, name, is_package)
                targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules
                           else source for alias in node.names]
            else:
                continue
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def find_cycle(graph):
    """One import cycle as a list of modules (first == last), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_walker_sees_known_edges_and_finds_a_planted_cycle():
    graph = import_graph()
    assert "fastcustom.ops.huber_gradients" in graph["fastcustom.ops.library"]
    assert "fastcustom.ops.library" in graph["fastcustom.ops.huber"]
    planted = {**graph, "fastcustom.ops.huber_gradients": {"fastcustom.ops.library"}}
    assert find_cycle(planted) is not None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_fresh_processes_import_the_fastcustom_under_test(run_scripts):
    # Test modules put the checkout on sys.path (bench/gpu/harness.py); a process that
    # imported the checkout's fastcustom instead of an installed one would lack its op.
    (child,) = run_scripts(("import json, fastcustom; print(json.dumps(fastcustom.__file__))",
                            [], {}))
    assert pathlib.Path(child).resolve() == pathlib.Path(fastcustom.__file__).resolve()
