"""The project's structure rules (issue 17): no import cycle among its modules, no module importing another
module's `_private` name, no module over 400 lines.

The import graph counts every import, at module level or inside a function (a lazy import that closes a
cycle is still a cycle a reader has to untangle), and `from package import module` as an edge to the module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("bench", "attacks", "defenses", "tasks")
LINE_LIMIT = 400


def project_modules() -> dict[str, Path]:
    files = [path for package in PACKAGES for path in (ROOT / package).rglob("*.py")]
    return {".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path
            for path in files}


def resolve(module: str, node: ast.ImportFrom, modules: dict[str, Path]) -> str | None:
    """The absolute module an ImportFrom names (a relative import resolved against `module`)."""
    if node.level == 0:
        return node.module
    package = module.split(".") if modules[module].name == "__init__.py" else module.split(".")[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join([*package, *([node.module] if node.module else [])])


def import_graph() -> tuple[dict[str, set[str]], list[str]]:
    """Edges module -> imported project module, and the `_private` names imported across modules."""
    modules = project_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    private: list[str] = []
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                graph[name] |= {alias.name for alias in node.names if alias.name in modules}
            elif isinstance(node, ast.ImportFrom):
                target = resolve(name, node, modules)
                if target not in modules:
                    continue
                for alias in node.names:
                    submodule = f"{target}.{alias.name}"
                    if submodule in modules:
                        graph[name].add(submodule)
                    else:
                        graph[name].add(target)
                        if alias.name.startswith("_") and not alias.name.startswith("__") and target != name:
                            private.append(f"{path.relative_to(ROOT)} imports {target}.{alias.name}")
        graph[name].discard(name)
    return graph, private


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle() -> None:
    graph, _ = import_graph()
    assert cycles(graph) == []


def test_no_private_name_imported_across_modules() -> None:
    _, private = import_graph()
    assert private == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_over_the_line_limit(package: str) -> None:
    long = {str(path.relative_to(ROOT)): count for name, path in project_modules().items()
            if name.split(".")[0] == package and (count := len(path.read_text().splitlines())) > LINE_LIMIT}
    assert long == {}


#: bench's packages by job, in the order docs/DESIGN.md §7 ("What lives where") lists them: each imports only
#: packages before it, so the package graph reads top-down.
LAYERS = ("config", "runtime", "plugins", "results", "zoo", "toolkit", "presets", "harness", "report", "commands",
          "perf")


def bench_package(module: str) -> str | None:
    """`bench.report.claims` -> `report`; `bench.config` -> `config`; None outside bench or for bench itself."""
    parts = module.split(".")
    return parts[1] if parts[0] == "bench" and len(parts) > 1 else None


def test_bench_has_no_flat_modules_and_its_packages_import_downwards() -> None:
    flat = sorted(path.name for path in (ROOT / "bench").glob("*.py") if path.name not in ("__init__.py", "config.py"))
    assert flat == [], f"modules outside a package by job: {flat}"
    graph, _ = import_graph()
    upward = sorted(f"{source} -> {target}" for source, targets in graph.items() for target in targets
                    if (mine := bench_package(source)) and (theirs := bench_package(target)) and mine != theirs
                    and LAYERS.index(theirs) > LAYERS.index(mine))
    assert upward == []
    packages = {bench_package(name) for name in project_modules()} - {None}
    assert packages == set(LAYERS), packages ^ set(LAYERS)


def test_every_function_level_import_says_why_it_is_local() -> None:
    """Imports live at module level unless start-up cost or a cycle forces them into a function; then a
    `# local: <why>` comment in that function, above its first import, says which (issue 30)."""
    silent = []
    for name, path in project_modules().items():
        lines = path.read_text().splitlines()
        for function in ast.walk(ast.parse(path.read_text())):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            imports = [node for node in ast.walk(function) if isinstance(node, ast.Import | ast.ImportFrom)]
            if imports:
                first = min(node.lineno for node in imports)
                if not any(line.strip().startswith("# local") for line in lines[function.lineno - 1:first]):
                    silent.append(f"{name}.{function.name}")
    assert silent == []


def test_the_public_surface_is_curated_and_light() -> None:
    """`from bench import …` gives the plugin author's and the script's names, the very objects of their
    modules; `import bench` alone loads no torch (the CLI's --help and result tools stay fast)."""
    import subprocess
    import sys

    import bench
    from bench.plugins import Attack, Defense, register_attack

    assert (bench.Attack, bench.Defense, bench.register_attack) == (Attack, Defense, register_attack)
    assert set(bench.__all__) >= {"Attack", "Defense", "PublicView", "OwnerView", "Release", "register_attack",
                                  "register_defense", "StrictModel", "load_preset", "run_benchmark"}
    for name in bench.__all__:
        assert getattr(bench, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        _ = bench.nothing_here
    probe = "import sys, bench; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_test_modules_keep_to_the_line_limit() -> None:
    long = {str(path.relative_to(ROOT)): count for path in sorted((ROOT / "tests").rglob("*.py"))
            if (count := len(path.read_text().splitlines())) > LINE_LIMIT}
    assert long == {}
