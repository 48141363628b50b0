"""Dependencies point down the layers (docs/ARCHITECTURE.md): no module of the core imports from a
higher layer, the core's packages form no cycle, and no node file imports another node file.
Imports inside functions count too: a lazy import is still a dependency. Read from the sources in
this checkout (the installed copy may hold modules that no longer exist)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
CORE = SRC / "fedvla" / "fedvla"
NODES = SRC / "fedvla_ros" / "fedvla_ros"

# Bottom first. A module may import its own package and anything in a lower layer.
LAYERS: list[tuple[str, ...]] = [
    ("fedvla", "fedvla.config", "fedvla.paths", "fedvla.topics", "fedvla.supervision", "fedvla.readiness",
     "fedvla.rendering", "fedvla.statistics", "fedvla.scheduling"),
    ("fedvla.graph", "fedvla.dds", "fedvla.language", "fedvla.bag"),
    ("fedvla.robot",),
    ("fedvla.iosp",),
    ("fedvla.camera",),
    ("fedvla.model",),
    ("fedvla.data",),
    ("fedvla.federation",),
    ("fedvla.skills",),
    ("fedvla.app",),
    ("fedvla.sim",),
    ("fedvla.twin",),
    ("fedvla.bench",),
    ("fedvla.replay", "fedvla.runner", "fedvla.cli"),
]


def module_name(path: Path, root: Path, package: str) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    parts = parts[:-1] if parts[-1] == "__init__" else parts
    return ".".join((package, *parts))


def imported_modules(path: Path, prefix: str) -> set[str]:
    """Every ``prefix``… module the file imports, at any depth (``from a import b`` counts as a.b
    when a.b is a module, else as a)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == prefix}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == prefix:
            found |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
    return found


def core_modules() -> dict[str, Path]:
    return {module_name(p, CORE, "fedvla"): p for p in sorted(CORE.rglob("*.py"))}


def layer_unit(module: str) -> tuple[int, str]:
    """(layer, unit): the unit is the package for a package's modules, else the module itself."""
    for rank, members in enumerate(LAYERS):
        for member in sorted(members, key=len, reverse=True):
            if module == member or module.startswith(member + ".") and member != "fedvla":
                return rank, member
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__} and docs/ARCHITECTURE.md")


def core_edges() -> list[tuple[str, str]]:
    modules = core_modules()
    edges = []
    for name, path in modules.items():
        for target in imported_modules(path, "fedvla"):
            while target not in modules and "." in target:  # a name imported from a module
                target = target.rsplit(".", 1)[0]
            if target != name:
                edges.append((name, target))
    return edges


def test_every_core_module_has_a_layer() -> None:
    for module in core_modules():
        layer_unit(module)


def test_no_core_module_imports_from_a_higher_layer() -> None:
    upward = []
    for source, target in core_edges():
        (source_rank, source_unit), (target_rank, target_unit) = layer_unit(source), layer_unit(target)
        if target_rank > source_rank:
            upward.append(f"{source} ({source_unit}, layer {source_rank}) imports {target} "
                          f"({target_unit}, layer {target_rank})")
    assert upward == []


def test_the_core_has_no_import_cycle() -> None:
    graph: dict[str, set[str]] = {}
    for source, target in core_edges():
        graph.setdefault(source, set()).add(target)
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return path + [module, target]
            if target not in state and (cycle := visit(target, path + [module])):
                return cycle
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            assert (cycle := visit(module, [])) is None, " -> ".join(cycle)


def node_files() -> dict[str, Path]:
    """The node modules: those setup.py gives an executable, except the tools/ package."""
    setup = (NODES.parent / "setup.py").read_text()
    modules = re.findall(r"= fedvla_ros\.([a-z0-9_.]+):main", setup)
    assert modules, "no console_scripts found in fedvla_ros/setup.py"
    return {m: NODES / f"{m}.py" for m in modules if not m.startswith("tools.")}


def test_no_node_file_imports_another_node_file() -> None:
    nodes = node_files()
    assert {"policy_node", "ur3_driver", "fed_server", "fed_client", "bag_player"} <= set(nodes)
    offenders = []
    for name, path in nodes.items():
        for target in imported_modules(path, "fedvla_ros"):
            parts = target.split(".")
            if len(parts) > 1 and parts[1] in nodes and parts[1] != name:
                offenders.append(f"{name} imports {target}")
    assert offenders == []


def test_every_import_of_our_own_modules_resolves() -> None:
    """Lazy imports (inside functions) run only when their command does: a module moved or
    renamed must not leave one behind."""
    import importlib.util

    unresolved = []
    for root, prefix in ((CORE, "fedvla"), (NODES, "fedvla_ros")):
        for path in sorted(root.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                        and node.module.split(".")[0] in ("fedvla", "fedvla_ros")):
                    continue
                try:
                    module = importlib.import_module(node.module)
                except ImportError as err:
                    unresolved.append(f"{path.relative_to(SRC)}: {node.module} ({err})")
                    continue
                for alias in node.names:
                    if not hasattr(module, alias.name) and importlib.util.find_spec(f"{node.module}.{alias.name}") is None:
                        unresolved.append(f"{path.relative_to(SRC)}: {node.module}.{alias.name}")
    assert unresolved == []


def test_the_checker_sees_an_upward_import(tmp_path) -> None:
    """The scan itself: a lazy upward import inside a function is found."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from fedvla.cli import main\n    import fedvla.sim.collect\n")
    assert imported_modules(source, "fedvla") == {"fedvla.cli", "fedvla.cli.main", "fedvla.sim.collect"}
    assert layer_unit("fedvla.cli") > layer_unit("fedvla.model.moe")
