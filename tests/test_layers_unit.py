"""The package's shape, read from its own imports: layers from the ground up, no import that
runs back up, no import circle, no widget code in the core.

The layers (docs/internals.md): ground (errors, progress, names, the server's layout, ...) <
commands (remote commands as data) < ssh < server < experiment < images < watch < data < app <
rehearsal < the front ends (cli, widgets). A module may import from its own layer and the ones below it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "labdeploy"

LAYERS = [
    ("ground", ["labdeploy", "labdeploy.errors", "labdeploy.redaction", "labdeploy.localfiles",
                "labdeploy.progress", "labdeploy.names", "labdeploy.demo",
                "labdeploy.server.layout"]),  # names and paths only: the command builders use it
    ("commands", ["labdeploy.commands"]),  # builders and parsers; they run nothing
    ("ssh", ["labdeploy.remote", "labdeploy.ssh"]),
    ("server", ["labdeploy.server"]),
    ("experiment", ["labdeploy.experiment"]),
    ("images", ["labdeploy.images"]),
    ("watch", ["labdeploy.watch"]),
    ("data", ["labdeploy.data", "labdeploy.export", "labdeploy.backup"]),
    ("app", ["labdeploy.app"]),
    ("rehearsal", ["labdeploy.rehearsal"]),  # deploys and removes a copy of an app: above app
    ("front ends", ["labdeploy.cli", "labdeploy.widgets"]),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """module -> the labdeploy modules it imports (at the top or inside a function)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    whole = f"{target}.{alias.name}"
                    found.add(whole if whole in modules else target)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def layer(module: str) -> int:
    best = max(((i, len(prefix)) for i, (_, prefixes) in enumerate(LAYERS) for prefix in prefixes
                if module == prefix or module.startswith(prefix + ".")), key=lambda t: t[1], default=None)
    assert best is not None, f"{module} is in no layer: add it to LAYERS (and to docs/internals.md)"
    return best[0]


GRAPH = imports()


def test_every_module_has_a_layer():
    for module in GRAPH:
        layer(module)


def test_no_import_runs_back_up_a_layer():
    upward = [f"{a} -> {b} ({LAYERS[layer(a)][0]} imports {LAYERS[layer(b)][0]})"
              for a, targets in GRAPH.items() for b in targets if b != "labdeploy" and layer(b) > layer(a)]
    assert not upward, "\n".join(sorted(upward))


def test_no_import_circle():
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not circles, circles


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if layer(m) < len(LAYERS) - 1))
def test_the_core_has_no_widget_code(module):
    path = next(p for p in PACKAGE.rglob("*.py") if module_name(p) == module)
    names = {n.module for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom) and n.module}
    names |= {a.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Import) for a in n.names}
    assert not any(n.split(".")[0] in ("ipywidgets", "IPython") for n in names), module


CORE = [p for p in PACKAGE.rglob("*.py") if layer(module_name(p)) < len(LAYERS) - 1]


def test_no_function_in_the_core_is_over_80_lines_and_no_class_over_400():
    """Small pieces with names that say what they do: a longer one is a procedure waiting to
    be split into steps (as app/deploy.py's Deploy is)."""
    long = []
    for path in CORE:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            size = node.end_lineno - node.lineno + 1
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and size > 80:
                long.append(f"{path.relative_to(PACKAGE.parent)}: {node.name} ({size} lines)")
            elif isinstance(node, ast.ClassDef) and size > 400:
                long.append(f"{path.relative_to(PACKAGE.parent)}: class {node.name} ({size} lines)")
    assert not long, "\n".join(long)


def test_every_public_short_name_hands_out_its_module_even_after_the_layers_load():
    # A short name that is also a subpackage (`images`) is shadowed by the subpackage once any of
    # its modules is imported; the names researchers use must stay reachable either way.
    script = """
import importlib, pkgutil, labdeploy
for info in pkgutil.walk_packages(labdeploy.__path__, "labdeploy."):
    if ".widgets" not in info.name and ".cli" not in info.name:
        importlib.import_module(info.name)
missing = []
for short, target in labdeploy.PUBLIC_MODULES.items():
    module = importlib.import_module("labdeploy." + target)
    public = getattr(labdeploy, short)
    for name in dir(module):
        if not name.startswith("_") and not hasattr(public, name):
            missing.append(short + "." + name)
print(missing)
assert not missing, missing
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
