"""The shape of the package: its import graph (module-level and function-level imports) has no
cycle, and nothing outside the adapters asks which library a model comes from."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "saf_plugin"

# Modules that may name SpikingJelly or snnTorch in code: the adapters (what each library's
# modules are), the kernels (SpikingJelly's surrogates, whose derivatives they compile, and
# SpikingJelly 0.0.0.0.14's CuPy backend), and the benchmark and demo (which build models of
# those libraries).
LIBRARY_CODE = ("saf_plugin.adapters", "saf_plugin.kernels", "saf_plugin.bench",
                "saf_plugin.demo")


def modules() -> dict[str, tuple[Path, bool]]:
    """Module name -> (its file, whether it is a package's __init__)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        init = parts[-1] == "__init__"
        out[".".join(parts[:-1] if init else parts)] = (path, init)
    return out


def imports(name: str, path: Path, init: bool, known) -> set[str]:
    """The package modules ``name`` imports anywhere in its file (``from . import x``,
    ``from .x import y``, ``import saf_plugin.x``, in functions too)."""
    package = name if init else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        for t in targets:
            while t not in known and "." in t:
                t = t.rpartition(".")[0]
            if t in known and t != name:
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, init, known) for name, (path, init) in known.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g[v]:
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

    for v in g:
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_cycle():
    g = graph()
    assert "saf_plugin.runtime.routes" in g and g["saf_plugin.swap"]  # (the graph is read)
    assert cycles(g) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_nothing_outside_the_adapters_asks_which_library_a_model_comes_from():
    libraries = ("spikingjelly", "snntorch")
    offenders = []
    for name, (path, _) in modules().items():
        if name.startswith(LIBRARY_CODE):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names = [node.value] if "." in node.value and " " not in node.value else []
            elif isinstance(node, ast.Attribute):
                names = [node.attr] if node.attr in ("_memories", "reset_net",
                                                     "SpikingNeuron", "reset_mem") else []
            else:
                continue
            offenders += [f"{name}:{node.lineno}: {n}" for n in names
                          if n.split(".")[0] in libraries or n in ("_memories", "reset_net",
                                                                   "SpikingNeuron", "reset_mem")]
    assert offenders == []
