"""The package's shape: floors that imports only run down, no private name imported across modules, no import
cycles, no Ray or MLflow below orchestration/, the cost model entered through its package, and `validate` without
torch."""
import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "subnet_ray"


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# The floors, lowest first: a module imports from its own floor or lower ones only. The science's data flow
# (sweep -> data -> models -> train -> subnetworks -> influence -> analysis) over the store, the stages that run
# one node, the orchestration (Ray, MLflow) on top of them, and the planning (preflight, cost model) on top of it all:
# it asks what the orchestration would ask and rehearses the real passes; then what each subcommand does, and the
# command line's table of them.
FLOORS = ["storage", "sweep", "data", "models", "train", "subnetworks", "influence", "analysis", "stages",
          "orchestration", "planning", "commands", "cli"]


def floor(module: str) -> int:
    """Returns the floor of a package module (by its first name under subnet_ray); KeyError if it has none."""
    return FLOORS.index(module.split(".")[1])


def trees() -> dict[str, tuple[ast.Module, bool]]:
    """Returns module -> (its AST, whether it is a package's __init__)."""
    return {_module(p): (ast.parse(p.read_text()), p.name == "__init__.py") for p in PACKAGE.rglob("*.py")}


def _target(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]  # relative: resolve against this module's package
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports() -> dict[str, set[str]]:
    """Returns module -> the modules it imports (anywhere in its source), from the AST."""
    out = {}
    for mod, (tree, is_pkg) in trees().items():
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                target = _target(mod, is_pkg, node)
                found.add(target)
                # `from .data import babel` imports the submodule babel
                found |= {f"{target}.{a.name}" for a in node.names}
        out[mod] = found
    return out


def internal_graph() -> dict[str, set[str]]:
    mods = imports()
    return {m: {t for t in targets if t in mods and t != m} for m, targets in mods.items()}


def test_import_graph_has_no_cycle():
    graph = internal_graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert "subnet_ray.stages" in graph and "subnet_ray.sweep.graph" in graph  # the walk saw the package


def test_every_module_has_a_floor_and_imports_only_downward():
    graph = internal_graph()
    unplaced = [m for m in graph if m != "subnet_ray" and m.split(".")[1] not in FLOORS]
    assert unplaced == [], f"place these in a floor of FLOORS: {unplaced}"
    upward = {m: sorted(t for t in targets if t != "subnet_ray" and floor(t) > floor(m))
              for m, targets in graph.items() if m != "subnet_ray"}
    assert {m: t for m, t in upward.items() if t} == {}
    assert floor("subnet_ray.planning.cost.calibration") > floor("subnet_ray.orchestration.tune") > floor("subnet_ray.sweep.config")


def test_no_private_name_is_imported_across_modules():
    """`from x import _name`, or `x._name` on a module bound by an import, from another module of the package."""
    mods = trees()
    found = []
    for mod, (tree, is_pkg) in mods.items():
        bound = {}  # local name -> package module it stands for
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = _target(mod, is_pkg, node)
                for a in node.names:
                    if f"{target}.{a.name}" in mods:
                        bound[a.asname or a.name] = f"{target}.{a.name}"
                    elif a.name.startswith("_") and not a.name.startswith("__") and target != mod and target in mods:
                        found.append(f"{mod}: from {target} import {a.name}")
            elif isinstance(node, ast.Import):
                bound |= {a.asname: a.name for a in node.names if a.asname and a.name in mods}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                    and node.attr.startswith("_") and not node.attr.startswith("__") and bound[node.value.id] != mod):
                found.append(f"{mod}: {bound[node.value.id]}.{node.attr}")
    assert found == [], "\n".join(found)


def test_ray_and_mlflow_never_below_orchestration():
    # the science (and the stages that run it) must run without Ray and without MLflow
    bad = {m: sorted(t for t in targets if t.split(".")[0] in ("ray", "mlflow"))
           for m, targets in imports().items() if m != "subnet_ray" and floor(m) < floor("subnet_ray.orchestration")}
    assert {m: t for m, t in bad.items() if t} == {}


def test_the_cost_model_is_entered_through_its_package():
    inside = "subnet_ray.planning.cost"
    reach_in = {m: sorted(t for t in targets if t.startswith(inside + "."))
                for m, targets in internal_graph().items() if not m.startswith(inside)}
    assert {m: t for m, t in reach_in.items() if t} == {}


def test_validate_imports_no_torch():
    code = ("import sys; from subnet_ray.cli import main; rc = main(['validate', 'sweeps/demo.yaml']); "
            "import json; print(json.dumps([rc, sorted(m for m in ('torch', 'transformers', 'ray', 'mlflow') if m in sys.modules)]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent, timeout=120)
    rc, loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert rc == 0 and loaded == [], out.stderr[-2000:]
