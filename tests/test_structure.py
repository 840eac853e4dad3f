"""The package's layering, read statically: no import cycles, and the floors below the tasks
never name them.

The import graph is built with ``ast`` from every module of ``tome_lab`` (nothing is
imported). An import at module level (including class bodies, ``try`` and ``if`` blocks, but
not ``if TYPE_CHECKING:``) runs when the module is imported; an import inside a function (or
an ``if __name__ == "__main__":`` block) runs when the function does. A module's own packages
count only when it names them: importing ``a.b.c`` runs ``a.b``'s ``__init__``, which is
already running when a module of ``a.b`` imports it; ``from a.b import helper`` inside
``a.b.c`` reads the half-initialised package, a cycle. The two are kept apart: the
module-level graph must be acyclic, and the layering rules hold for both. A package
``__init__`` that calls ``import_submodules(__name__)`` imports every module of its package
(the plug-in pattern), so it has an edge to each.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "tome_lab"
PACKAGE = "tome_lab"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _is_main(test: ast.expr) -> bool:
    """``if __name__ == "__main__":`` (runs as a script only, like a function call)."""
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name)
            and test.left.id == "__name__" and len(test.comparators) == 1
            and getattr(test.comparators[0], "value", None) == "__main__")


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool,
             known: set[str]) -> set[str]:
    """The tome_lab modules an import statement imports (the root package excluded: every
    module imports it implicitly, which is not a dependency between floors)."""
    names: set[str] = set()
    if isinstance(node, ast.Import):
        names = {alias.name for alias in node.names}
    else:
        base = node.module or ""
        if node.level:
            parts = module.split(".")
            anchor = parts if is_package else parts[:-1]
            anchor = anchor[:len(anchor) - node.level + 1]
            base = ".".join(anchor + ([base] if base else []))
        names.add(base)
        names |= {f"{base}.{alias.name}" for alias in node.names}
    out = set()
    for name in names:
        # `import a.b.c` runs a.b's __init__ too: count every known package on the way, but
        # the importer's own packages (already importing, whatever it names) only when named
        parts = name.split(".")
        for i in range(2, len(parts) + 1):
            prefix = ".".join(parts[:i])
            own = module.startswith(prefix + ".")
            if prefix in known and (i == len(parts) or not own):
                out.add(prefix)
    return out


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(module-level edges, function-level edges) between the modules of ``tome_lab``."""
    modules = _modules()
    known = set(modules)
    top: dict[str, set[str]] = {m: set() for m in modules}
    inner: dict[str, set[str]] = {m: set() for m in modules}

    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

        def visit(node: ast.AST, in_function: bool, module: str = module,
                  is_package: bool = is_package) -> None:
            if isinstance(node, ast.If) and _is_type_checking(node.test):
                for child in node.orelse:  # the TYPE_CHECKING body never runs
                    visit(child, in_function)
                return
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges = inner if in_function else top
                edges[module] |= _targets(node, module, is_package, known) - {module}
                return
            if (not in_function and is_package and isinstance(node, ast.Call)
                    and getattr(node.func, "id", getattr(node.func, "attr", None))
                    == "import_submodules"):
                top[module] |= {m for m in known if m.rpartition(".")[0] == module}
            inside = in_function or isinstance(
                node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) or (
                isinstance(node, ast.If) and _is_main(node.test))
            for child in ast.iter_child_nodes(node):
                visit(child, inside)

        visit(tree, False)
    return top, inner


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = dfs(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = dfs(node)
            if found:
                return found
    return None


def test_the_graph_sees_the_package():
    top, inner = import_graph()
    assert {"tome_lab.registry", "tome_lab.data", "tome_lab.models", "tome_lab.tasks"} <= set(top)
    assert "tome_lab.registry" in top["tome_lab.data"]  # a module-level import
    assert "tome_lab.tasks.clutter" in top["tome_lab.tasks"]  # import_submodules(__name__)
    assert "tome_lab.data" in inner["tome_lab.cli"]  # an import inside a function


def test_a_cycle_is_named():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_at_module_level():
    top, _ = import_graph()
    cycle = find_cycle(top)
    assert cycle is None, "import cycle at module level: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("level", ["module", "function"])
def test_lower_floors_never_import_the_tasks(level):
    """The tasks register themselves (registry.py names their package as a plug-in source);
    data, models and the engine never import them, at module level or in a function."""
    top, inner = import_graph()
    edges = top if level == "module" else inner
    upward = sorted(f"{m} -> {t}" for m, targets in edges.items() for t in targets
                    if t.startswith("tome_lab.tasks") and not m.startswith("tome_lab.tasks"))
    assert not upward, f"{level}-level imports of the tasks from below: {upward}"


def test_config_and_the_parsers_import_no_torch():
    """config is plain data: names are checked by the registries, which import the plug-ins
    (and torch) on their first lookup, not when config is imported."""
    import subprocess
    import sys

    code = ("import sys, tome_lab, tome_lab.config, tome_lab.cli, tome_lab.registry; "
            "heavy = sorted(m for m in ('torch', 'timm', 'tome_lab.matching', 'tome_lab.tasks') "
            "if m in sys.modules); print(heavy); sys.exit(bool(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT.parent)
    assert out.returncode == 0, f"importing config pulls in {out.stdout.strip()}{out.stderr}"


def test_the_spoken_digits_generator_knows_no_dataset_nor_model():
    """The synthesis (and its command) sits below the dataset and the model, which read it."""
    top, inner = import_graph()
    synth = "tome_lab.tasks.spoken_digits_synth"
    assert synth in top["tome_lab.tasks.spoken_digits"]
    reaches = top[synth] | inner[synth]
    assert not reaches & {"tome_lab.models", "tome_lab.tasks.spoken_digits", "tome_lab.registry"}
    from tome_lab.tasks import spoken_digits, spoken_digits_synth

    assert spoken_digits.main is spoken_digits_synth.main  # one command, two spellings


# The experiments' packages, each module importing only those above it in this order.
LAYERS = {
    "tome_lab.launch": ("config", "execution", "claims", "backends", "cli"),
    "tome_lab.search": ("config", "space", "study", "trials", "workers", "frontier", "diffrate",
                        "cli"),
}


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_the_experiment_packages_import_downward_only(package):
    """Within launch and search no module imports a later one or its own package's
    ``__init__`` (which re-exports them all); the launchers never import the search."""
    top, inner = import_graph()
    order = [f"{package}.{m}" for m in LAYERS[package]]
    assert set(order) | {package, f"{package}.__main__"} == {
        m for m in top if m == package or m.startswith(package + ".")}
    for i, module in enumerate(order):
        reaches = top[module] | inner[module]
        later = sorted(reaches & ({package} | set(order[i + 1:])))
        assert not later, f"{module} imports {later}"
    launch = [m for m in top if m.startswith("tome_lab.launch")]
    upward = sorted(t for m in launch for t in top[m] | inner[m] if t.startswith("tome_lab.search"))
    assert not upward, f"the launchers import the search: {upward}"


def _third_party_imports(path: Path) -> set[str]:
    """Every module name an ``import`` / ``from ... import`` statement of ``path`` names (at
    any depth, functions included), relative imports left out."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module)
    return names


# each model library's internals belong to its family adapters (issue 27): the library's
# top-level name -> the modules allowed to import it
FAMILY_LIBRARIES = {
    "transformers": lambda m: m.startswith(("tome_lab.families.hf_", "tome_lab.families._hf")),
    "open_clip": lambda m: m == "tome_lab.families.open_clip",
}


@pytest.mark.parametrize("library", sorted(FAMILY_LIBRARIES))
def test_a_model_library_is_known_to_its_adapters_only(library):
    allowed = FAMILY_LIBRARIES[library]
    users = sorted(m for m, p in _modules().items()
                   if any(n.split(".")[0] == library for n in _third_party_imports(p)))
    assert all(allowed(m) for m in users), f"{library} imported outside its adapters: {users}"


def test_the_engine_knows_no_model_library():
    """tome_lab.engine plans, merges and counts for every family and imports none of them."""
    names = _third_party_imports(ROOT / "engine.py")
    libs = {n.split(".")[0] for n in names} & {"timm", "transformers", "open_clip"}
    assert not libs, f"engine.py imports {sorted(libs)}"


# a model's submodules by the names timm (and most ViT libraries) give them; the search
# package reaches a model only through the engine, never through these (other modules, e.g.
# tome_lab.vis reading patch_embed.grid_size, are not held to it)
MODEL_INTERNALS = {"blocks", "attn", "qkv", "norm1", "norm2", "mlp", "ls1", "ls2", "patch_embed",
                   "_pos_embed", "norm_pre", "forward_head", "global_pool", "fc_norm"}


def test_the_search_reaches_models_only_through_the_engine():
    """tome_lab.search (the Optuna search and the learned rates' relaxed forward) names none
    of a model's submodules: the learned rates run inside the families' own forwards."""
    found = []
    for path in sorted((ROOT / "search").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in MODEL_INTERNALS:
                found.append(f"{path.name}:{node.lineno} .{node.attr}")
    assert not found, f"tome_lab.search reaches into a model: {found}"


def test_the_core_install_runs_without_the_extras():
    """With transformers and open_clip unimportable (the core install), the adapters still
    register, refuse nothing they cannot see, and a timm ViT patches and runs."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['transformers'] = None; sys.modules['open_clip'] = None\n"
        "import timm, torch, tome_lab\n"
        "from tome_lab.registry import FAMILIES\n"
        "m = timm.create_model('deit_tiny_patch16_224', pretrained=False, depth=2).eval()\n"
        "tome_lab.apply_tome(m, r=8)\n"
        "assert m(torch.randn(1, 3, 224, 224)).shape == (1, 1000)\n"
        "assert {'hf_vit', 'openclip', 'timm'} <= set(FAMILIES.names())\n"
        "assert 'transformers' not in [k for k, v in sys.modules.items() if v is not None]\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT.parent)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
