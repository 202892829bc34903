"""The package's shape, read from its source: imports point one way, with no circle."""

from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = REPO_ROOT / "sslzoo"
PACKAGE = PACKAGE_DIR.name
RUN_FOLDER_OWNER = PACKAGE_DIR / "rundir.py"
RUN_FOLDER_NAMES = {
    "config.yaml",
    "metrics.jsonl",
    "checkpoints",
    "last.pt",
    "backbone.pt",
    "snapshots",
    "index.json",
    "backbone_step",
    "eval_knn.json",
    "eval_linear.json",
    "eval_lowshot.json",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """Every ``sslzoo`` module that ``path`` imports, at module level or inside a function.

    ``from a import b`` names module ``a.b`` when ``b`` is a module, else ``a``. Importing ``a.b`` from
    outside package ``a`` first runs ``a/__init__.py``, so the package counts as imported too. A package
    that imports its modules with ``pkgutil.iter_modules(__path__)`` (the method registry) imports them all.
    """
    importer = module_name(path)
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "iter_modules":
            targets.update(m for m in modules if m.startswith(f"{importer}."))
        elif isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                targets.add(submodule if submodule in modules else node.module)
    found = set()
    for target in targets:
        parts = target.split(".")
        for depth in range(1, len(parts) + 1):
            name = ".".join(parts[:depth])
            is_own_package = importer == name or importer.startswith(f"{name}.")
            if name in modules and not is_own_package:
                found.add(name)
    return found - {importer}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE_DIR.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imported_modules(path, modules) for path in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as ``[a, b, ..., a]``, or None (depth-first search)."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return path[path.index(module) :] + [module]
        if module in done:
            return None
        for target in sorted(graph[module]):
            cycle = visit(target, [*path, module])
            if cycle:
                return cycle
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module, [])
        if cycle:
            return cycle
    return None


def test_import_graph_sees_function_level_imports():
    graph = import_graph()
    assert f"{PACKAGE}.trainer" in graph[f"{PACKAGE}.cli"]  # imported inside main()
    assert f"{PACKAGE}.methods.dino" in graph[f"{PACKAGE}.methods"]  # the registry imports every method
    assert f"{PACKAGE}.methods" in graph[f"{PACKAGE}.eval.online_probe"]  # the package runs before methods.base


def test_find_cycle_reports_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_config_imports_no_method():
    """The schema is the bottom layer: methods may import it, so it must not import them."""
    assert import_graph()[f"{PACKAGE}.config"] == {f"{PACKAGE}.errors"}


def path_names(path: Path) -> list[str]:
    """The string pieces of ``path`` that name a run-folder entry: ``"config.yaml"``, ``f"{d}/backbone.pt"``
    (prose that mentions a name, as in a docstring or a message, is not a path)."""
    pieces = [node.value for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Constant)]
    return [p for p in pieces if isinstance(p, str) and any(part in RUN_FOLDER_NAMES for part in p.split("/"))]


def test_only_rundir_spells_the_run_folder_names():
    sources = [*PACKAGE_DIR.rglob("*.py"), *(REPO_ROOT / "benchmarks").glob("*.py"), REPO_ROOT / "train.py"]
    spelled = {str(p.relative_to(REPO_ROOT)): path_names(p) for p in sources if p != RUN_FOLDER_OWNER}
    assert {file: names for file, names in spelled.items() if names} == {}
    assert path_names(RUN_FOLDER_OWNER)  # the check would see them


def test_dino_and_ibot_compose_their_self_distillation():
    """iBOT is not a DINO subclass, and the patch loss is not DINO's loss with another forward."""
    from sslzoo.losses.dino import DINOLoss, TeacherCentre
    from sslzoo.losses.ibot import MaskedPatchLoss
    from sslzoo.methods import METHODS

    dino, ibot = METHODS.get("dino"), METHODS.get("ibot")
    assert not issubclass(ibot, dino)
    assert not issubclass(MaskedPatchLoss, DINOLoss) and issubclass(MaskedPatchLoss, TeacherCentre)
    assert "forward" not in vars(TeacherCentre)  # the shared teacher side has no loss signature to change


def imported_by(graph: dict[str, set[str]], module: str) -> set[str]:
    """Every module ``module`` imports, directly or through others."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        for target in graph[todo.pop()] - seen:
            seen.add(target)
            todo.append(target)
    return seen


def test_training_imports_no_evaluation():
    """The online probe is a callback the entry point attaches: the loop reaches no evaluation code."""
    graph = import_graph()
    assert f"{PACKAGE}.eval.online_probe" in imported_by(graph, f"{PACKAGE}.cli")  # the check would see it
    reached = imported_by(graph, f"{PACKAGE}.trainer")
    assert {f"{PACKAGE}.runtime", f"{PACKAGE}.metrics_log", f"{PACKAGE}.callbacks"} <= reached
    assert sorted(m for m in reached if m.startswith(f"{PACKAGE}.eval")) == []


def test_methods_import_neither_the_run_config_nor_the_data_module():
    """A method is built from its own recipe section (``MethodSetup``), which ``sslzoo.build`` makes."""
    graph = import_graph()
    outside = {f"{PACKAGE}.config", f"{PACKAGE}.data"}
    assert outside <= imported_by(graph, f"{PACKAGE}.build")  # the check would see them
    methods = [m for m in graph if m.startswith((f"{PACKAGE}.methods", f"{PACKAGE}.losses"))]
    assert len(methods) > 5
    reached = {m: sorted(imported_by(graph, m) & outside) for m in methods}
    assert {m: r for m, r in reached.items() if r} == {}
