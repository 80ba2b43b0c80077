"""The layer table of docs/design.md, enforced: no import cycles in the package, each layer imports only the layers
below it, and the algorithm core is plain PyTorch (importable, and imported, without Ray).

The import graph is read from the source with ``ast``: top-level and function-level imports alike (a lazy import
inside a function is still a dependency), ``import srel_ray.x``, ``from srel_ray.x import y`` (an edge to
``srel_ray.x.y`` when that is a module) and relative imports.
"""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "srel_ray"
RAY_FREE = ["core", "models", "data", "storage", "stages", "config.py", "errors.py", "teacher.py", "search_space.py",
            "trial.py", "methods.py", "students.py", "summary.py", "stage_loop.py", "studies"]

# The layer of every srel_ray module, from the bottom up: the first prefix that matches a module's name names its
# layer (docs/design.md, "Layers").
LAYERS = {
    "srel_ray.errors": "errors",
    "srel_ray.models": "models",
    "srel_ray.config": "config",
    "srel_ray.methods": "config",
    "srel_ray.core": "core",
    "srel_ray.storage": "storage",
    "srel_ray.data": "data",
    "srel_ray.teacher": "data",
    "srel_ray.progress": "support",
    "srel_ray.tracking": "support",
    "srel_ray.students": "support",
    "srel_ray.stages": "stages",
    "srel_ray.search_space": "tuning",
    "srel_ray.trial": "tuning",
    "srel_ray.distributed": "distributed",
    "srel_ray.pipeline": "driver",
    "srel_ray.summary": "driver",
    "srel_ray.stage_loop": "driver",
    "srel_ray.tuning": "driver",
    "srel_ray.inspection": "driver",
    "srel_ray.studies": "driver",
    "srel_ray.cli": "driver",
    "srel_ray": "package",  # srel_ray/__init__.py: the version
}
# Which layers each layer may import (its own included).
MAY_IMPORT = {
    "errors": {"errors"},
    "models": {"errors", "models"},
    "config": {"errors", "models", "config"},  # models: the model-name check
    "core": {"errors", "models", "config", "core"},  # config: the dataclasses of the stages it runs
    "storage": {"errors", "config", "core", "storage"},
    "data": {"errors", "models", "config", "core", "storage", "data"},
    "support": {"errors", "config", "storage", "support"},
    "stages": {"errors", "models", "config", "core", "storage", "data", "support", "stages"},
    "tuning": {"errors", "models", "config", "core", "storage", "data", "support", "stages", "tuning"},
    "distributed": {"errors", "models", "config", "core", "storage", "data", "support", "stages", "tuning",
                    "distributed"},
    "driver": {"errors", "models", "config", "core", "storage", "data", "support", "stages", "tuning", "distributed",
               "driver", "package"},
    "package": set(),
}
# Cycles and back edges the package is allowed to keep: none (issue 17 removed config <-> methods <-> teacher,
# data.real <-> its readers and pipeline -> distributed.tune -> trial -> pipeline). An entry needs a reason here.
KNOWN_CYCLES = {"modules": [], "packages": [], "layer_edges": []}


# ------------------------------------------------------------------------------------------- the graph


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(name: str, source: str, is_package: bool, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that ``source`` (module ``name``) imports anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, up one more per extra dot
                parts = name.split(".") if is_package else name.split(".")[:-1]
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names}
    return {m for m in found if m in modules and m != name}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module name -> the package's modules it imports."""
    paths = {module_name(p, package): p for p in package.rglob("*.py")}
    return {name: imported_modules(name, path.read_text(), path.name == "__init__.py", set(paths))
            for name, path in paths.items()}


def collapse(graph: dict[str, set[str]], depth: int = 2) -> dict[str, set[str]]:
    """The graph with every module below ``depth`` name parts merged into its package (srel_ray.data.real ->
    srel_ray.data)."""
    def node(m: str) -> str:
        return ".".join(m.split(".")[:depth])

    out: dict[str, set[str]] = {}
    for name, targets in graph.items():
        out.setdefault(node(name), set()).update(node(t) for t in targets if node(t) != node(name))
    return out


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected groups of more than one node (Tarjan): every import cycle lies inside one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while not group or w != v:
                w = stack.pop()
                group.add(w)
            if len(group) > 1:
                found.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def one_cycle(graph: dict[str, set[str]], group: set[str], start: str) -> list[str]:
    """A shortest import cycle of ``group`` through ``start``, as a path that ends where it starts."""
    paths = {start: [start]}
    todo = [start]
    while todo:
        v = todo.pop(0)
        for w in sorted(graph[v] & group):
            if w == start:
                return paths[v] + [start]
            if w not in paths:
                paths[w] = paths[v] + [w]
                todo.append(w)
    raise AssertionError(f"{sorted(group)} is not strongly connected")


def unexpected_cycles(graph: dict[str, set[str]], known: list[set[str]]) -> list[str]:
    """One cycle of each strongly connected group that is not a known one, through a node no known group has (the
    new part) where there is one."""
    out = []
    for group in cycles(graph):
        if group not in known:
            new = sorted(group - set().union(*known)) or sorted(group)
            out.append(" -> ".join(one_cycle(graph, group, new[0])))
    return out


def layer_of(module: str) -> str:
    return next(layer for prefix, layer in LAYERS.items() if module == prefix or module.startswith(prefix + "."))


def layer_violations(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((name, target) for name, targets in graph.items() for target in targets
                  if layer_of(target) not in MAY_IMPORT[layer_of(name)])


# ------------------------------------------------------------------------------------------- the package


def test_the_package_has_no_new_import_cycles():
    graph = import_graph()
    assert len(graph) > 40 and "srel_ray.stages.checks" in graph["srel_ray.pipeline"]
    assert unexpected_cycles(graph, KNOWN_CYCLES["modules"]) == []
    assert unexpected_cycles(collapse(graph), KNOWN_CYCLES["packages"]) == []


def test_known_cycles_are_still_there():
    """An allow-listed cycle that is gone is taken off the list, so it cannot come back unnoticed."""
    graph = import_graph()
    assert [g for g in KNOWN_CYCLES["modules"] if g not in cycles(graph)] == []
    assert [g for g in KNOWN_CYCLES["packages"] if g not in cycles(collapse(graph))] == []
    assert [e for e in KNOWN_CYCLES["layer_edges"] if e not in layer_violations(graph)] == []


def test_every_module_has_a_layer_and_imports_only_the_layers_it_may():
    graph = import_graph()
    assert {name: layer_of(name) for name in graph if name.startswith("srel_ray.core.")} == \
        {name: "core" for name in graph if name.startswith("srel_ray.core.")}
    new = [edge for edge in layer_violations(graph) if edge not in KNOWN_CYCLES["layer_edges"]]
    assert new == [], "imports against the layer table of docs/design.md (importer, imported)"


def test_the_layer_table_has_no_cycle_of_its_own():
    allowed = {layer: {other for other in may if other != layer} for layer, may in MAY_IMPORT.items()}
    assert cycles(allowed) == []


# ------------------------------------------------------------------------------------------- the checker itself


def test_the_cycle_finder_reports_a_cycle_and_names_its_path():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e2"}, "e2": {"d"}}
    assert cycles(graph) == [{"a", "b", "c"}]
    assert unexpected_cycles(graph, []) == ["a -> b -> c -> a"]
    assert unexpected_cycles(graph, [{"a", "b", "c"}]) == []
    graph["d"] = {"a"}  # a new edge that makes a known cycle larger: reported through its new part
    assert unexpected_cycles(graph, [{"a", "b", "c"}]) == ["d -> a -> b -> c -> d"]
    assert cycles({"x": {"y"}, "y": set()}) == []


def test_the_graph_reads_lazy_relative_and_submodule_imports(tmp_path):
    pkg = tmp_path / "srel_ray"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import leaf\n")
    (pkg / "sub" / "leaf.py").write_text("def f():\n    from srel_ray import top\n")
    (pkg / "sub" / "other.py").write_text("from .leaf import f\nimport srel_ray.top\n")
    (pkg / "top.py").write_text("import os\nfrom srel_ray.sub import other\n")
    graph = import_graph(pkg)
    assert graph == {"srel_ray": set(), "srel_ray.sub": {"srel_ray.sub.leaf"}, "srel_ray.sub.leaf": {"srel_ray.top"},
                     "srel_ray.sub.other": {"srel_ray.sub.leaf", "srel_ray.top"},
                     "srel_ray.top": {"srel_ray.sub.other"}}
    assert unexpected_cycles(graph, []) == ["srel_ray.sub.leaf -> srel_ray.top -> srel_ray.sub.other -> "
                                            "srel_ray.sub.leaf"]
    assert collapse(graph) == {"srel_ray": set(), "srel_ray.sub": {"srel_ray.top"}, "srel_ray.top": {"srel_ray.sub"}}


# ------------------------------------------------------------------------------------------- no Ray in the core


def _top_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
            if node.module.startswith("srel_ray.distributed"):
                names.add("srel_ray.distributed")
    return names


def test_core_modules_never_import_ray():
    files = [f for entry in RAY_FREE for f in ((PACKAGE / entry).rglob("*.py") if (PACKAGE / entry).is_dir()
                                                else [PACKAGE / entry])]
    assert len(files) > 10
    offenders = {str(f.relative_to(PACKAGE)): sorted(_top_level_imports(f) & {"ray", "srel_ray.distributed"})
                 for f in files if _top_level_imports(f) & {"ray", "srel_ray.distributed"}}
    assert offenders == {}


def test_importing_the_core_loads_no_ray():
    code = ("import sys, srel_ray.core.recover, srel_ray.core.student, srel_ray.core.relabel, srel_ray.models, "
            "srel_ray.storage.sets, srel_ray.data.real, srel_ray.teacher, srel_ray.config, srel_ray.search_space, "
            "srel_ray.trial; "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
