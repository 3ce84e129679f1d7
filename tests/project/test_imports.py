"""Import hygiene over every .py file of the package, imports inside functions included:
no import cycle between galmorph modules, and no deep-learning framework outside the two
backend folders. Plus, at run time, importing the neutral core loads no framework."""

import ast
import json
from pathlib import Path

from conftest import REPO, run_python

PACKAGE = REPO / "galmorph"
FRAMEWORKS = ("torch", "tensorflow", "keras", "jax")
BACKEND_DIRS = {"galmorph.backends.keras", "galmorph.backends.torch"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every import statement anywhere in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [a.name for a in node.names]))
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {m: set() for m in modules}
    for name, path in modules.items():
        for module, names in _imports(path):
            if not module.startswith("galmorph"):
                continue
            targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in modules]
            if len(targets) < len(names) or not names:  # something comes from the module itself
                targets.append(module)
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_between_galmorph_modules():
    graph = _graph()
    assert len(graph) > 40  # the walk found the package
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_framework_import_outside_the_backend_folders():
    offenders = []
    for name, path in _modules().items():
        if any(name == d or name.startswith(d + ".") for d in BACKEND_DIRS):
            continue
        for module, _ in _imports(path):
            if module.split(".")[0] in FRAMEWORKS:
                offenders.append(f"{name}: {module}")
    assert offenders == []


def test_core_imports_no_framework():
    """Importing every neutral module (and building the CLI) loads no framework."""
    neutral = sorted(m for m in _modules() if m != "galmorph.__main__"
                     and not any(m == d or m.startswith(d + ".") for d in BACKEND_DIRS))
    code = (
        "import importlib, json, sys\n"
        f"for m in {neutral!r}: importlib.import_module(m)\n"
        "from galmorph.cli import build_parser; build_parser()\n"
        "print(json.dumps(sorted(m for m in ('torch', 'tensorflow', 'keras', 'jax') if m in sys.modules)))\n"
    )
    out = run_python(code)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_each_backend_loads_only_its_framework():
    for backend, banned in (("keras", "torch"), ("torch", "tensorflow")):
        code = (f"import sys; from galmorph import backends; backends.get({backend!r}); "
                f"print({banned!r} in sys.modules)")
        out = run_python(code)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().splitlines()[-1] == "False", backend
