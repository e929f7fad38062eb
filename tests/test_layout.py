"""The package's shape: no import cycles, Ray and MLflow only in orchestration/ and the CLI,
and `validate` without torch."""
import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "subnet_ray"


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Returns module -> the modules it imports (anywhere in its source), from the AST."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        mod, is_pkg = _module(path), path.name == "__init__.py"
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this module's package
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module
                found.add(target)
                # `from . import babel` imports the submodule babel
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
    assert "subnet_ray.stages" in graph and "subnet_ray.graph" in graph  # the walk saw the package


def test_ray_and_mlflow_only_in_orchestration_and_cli():
    bad = {m: sorted(t for t in targets if t.split(".")[0] in ("ray", "mlflow"))
           for m, targets in imports().items()
           if not (m.startswith("subnet_ray.orchestration") or m == "subnet_ray.cli")}
    assert {m: t for m, t in bad.items() if t} == {}


def test_validate_imports_no_torch():
    code = ("import sys; from subnet_ray.cli import main; rc = main(['validate', 'sweeps/demo.yaml']); "
            "import json; print(json.dumps([rc, sorted(m for m in ('torch', 'transformers', 'ray', 'mlflow') if m in sys.modules)]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent, timeout=120)
    rc, loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert rc == 0 and loaded == [], out.stderr[-2000:]
