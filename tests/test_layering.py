"""The architecture's import rules (docs/architecture.md), checked on the source with ast."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"amc": ROOT / "amc", "amc_envs": ROOT / "envs" / "amc_envs", "amc_agents": ROOT / "agents" / "amc_agents"}


def _imports():
    """(module, imported module) for every import in the three packages, relative imports resolved."""
    for pkg, folder in PACKAGES.items():
        for f in folder.rglob("*.py"):
            parts = [pkg, *f.relative_to(folder).with_suffix("").parts]
            module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            base = parts[:-1]
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, ast.Import):
                    yield from ((module, a.name) for a in node.names)
                elif isinstance(node, ast.ImportFrom):
                    root = base[: len(base) - node.level + 1] if node.level else []
                    yield module, ".".join(root + ([node.module] if node.module else []))


def test_the_library_imports_no_application_layer():
    bad = [(m, t) for m, t in _imports() if m.startswith("amc") and not m.startswith(("amc.cli", "amc_envs", "amc_agents"))
           and t.split(".")[0] in ("amc_envs", "amc_agents", "gymnasium", "stable_baselines3", "argparse")]
    assert not bad


def test_envs_import_only_the_library_and_agents_nothing_above():
    assert not [(m, t) for m, t in _imports() if m.startswith("amc_envs") and t.startswith(("amc_agents", "amc.cli"))]
    assert not [(m, t) for m, t in _imports() if m.startswith("amc_agents") and t.startswith("amc.cli")]


def test_no_import_cycles():
    modules = {m for m, _ in _imports()}
    edges = {}
    for m, t in _imports():
        while t and t not in modules:
            t = t.rpartition(".")[0]
        if t and t != m and not m.startswith(t + "."):
            edges.setdefault(m, set()).add(t)
    state = {}

    def visit(node, path):
        if state.get(node) == 1:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(node):] + [node]))
        if state.get(node) == 2:
            return
        state[node] = 1
        for nxt in edges.get(node, ()):
            visit(nxt, path + [node])
        state[node] = 2

    for m in sorted(modules):
        visit(m, [])
