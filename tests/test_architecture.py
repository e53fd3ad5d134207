"""The layers of docs/DESIGN.md hold in the code: every import (function-level ones too)
points to the importer's own layer or a lower one, and no two modules import each other,
directly or around a loop.

Reference: the layer table in docs/DESIGN.md, read here, and the source's own import
statements, parsed with ``ast`` (nothing of the package is imported or run).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Dict, List, Set

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "dpn_gluon"


def read_layers(design: Path) -> Dict[str, int]:
    """{module pattern: layer number} from DESIGN.md's table ``| N | layer | modules | ... |``."""
    text = design.read_text(encoding="utf-8")
    table = text.split("<!-- layers -->", 1)[1].split("<!-- /layers -->", 1)[0]
    layers = {}
    for row in table.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].isdigit():
            for pattern in re.findall(r"`([^`]+)`", cells[2]):
                layers[pattern] = int(cells[0])
    return layers


def layer_of(module: str, layers: Dict[str, int]) -> int:
    """The layer of ``module`` (relative to the package, "" for the package itself): an exact
    entry first, else the longest ``prefix.*`` entry that covers it."""
    name = module or PACKAGE
    if name in layers:
        return layers[name]
    covering = [p for p in layers if p.endswith(".*") and (name + ".").startswith(p[:-1])]
    if not covering:
        raise AssertionError("%s is in no layer of docs/DESIGN.md" % (name,))
    return layers[max(covering, key=len)]


def module_names(tree: Path) -> Dict[str, Path]:
    """{module relative to the package: file}, and ``hubconf`` beside it."""
    found = {}
    for path in (tree / PACKAGE).rglob("*.py"):
        parts = list(path.relative_to(tree / PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    if (tree / "hubconf.py").exists():
        found["hubconf"] = tree / "hubconf.py"
    return found


def imports(modules: Dict[str, Path]) -> Dict[str, Set[str]]:
    """{module: the package's modules it imports}, every import statement at any depth."""
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                bases = [a.name for a in node.names]
                found = []
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".") if package else []
                    parts = parts[:len(parts) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                    base = PACKAGE + ("." + base if base else "")
                else:
                    base = node.module or ""
                bases = [base]
                found = [base + "." + a.name for a in node.names]
            else:
                continue
            inside = [full[len(PACKAGE) + 1:] for full in found + bases
                      if full == PACKAGE or full.startswith(PACKAGE + ".")]
            named = [m for m in inside[:len(found)] if m in modules]
            # "from pkg import module" imports the module (and runs pkg/__init__, which is
            # the package's own business); "from module import name" imports the module
            targets.update(named or [m for m in inside[len(found):] if m in modules])
        graph[name] = targets - {name}
    return graph


def upward(graph: Dict[str, Set[str]], layers: Dict[str, int]) -> List[str]:
    return sorted("%s (layer %d) imports %s (layer %d)"
                  % (a or PACKAGE, layer_of(a, layers), b or PACKAGE, layer_of(b, layers))
                  for a, targets in graph.items() for b in targets
                  if layer_of(b, layers) > layer_of(a, layers))


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The import loops (strongly connected components of two or more modules)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def layers():
    return read_layers(ROOT / "docs" / "DESIGN.md")


@pytest.fixture(scope="module")
def graph():
    return imports(module_names(ROOT))


def test_every_module_has_a_layer(graph, layers):
    for module in graph:
        layer_of(module, layers)


def test_imports_point_only_down(graph, layers):
    assert upward(graph, layers) == []


def test_no_import_cycles(graph):
    assert cycles(graph) == []


def test_the_check_sees_an_upward_import_and_a_cycle(tmp_path, layers):
    """The checks fail where they must: a format module that imports the converter inside a
    function, and two formats that import each other, in a copy of the package's shape."""
    pkg = tmp_path / PACKAGE
    (pkg / "formats").mkdir(parents=True)
    (pkg / "convert").mkdir()
    for f in ("__init__.py", "formats/__init__.py", "convert/__init__.py", "convert/cli.py"):
        (pkg / f).write_text("")
    (pkg / "formats" / "mxparams.py").write_text(
        "def later():\n    from ..convert import cli\n    return cli\n")
    (pkg / "formats" / "torchzip.py").write_text("from . import names\n")
    (pkg / "formats" / "names.py").write_text("from dpn_gluon.formats import torchzip\n")
    graph = imports(module_names(tmp_path))
    assert graph["formats.mxparams"] == {"convert.cli"}
    assert upward(graph, layers) == ["formats.mxparams (layer %d) imports convert.cli (layer %d)"
                                     % (layers["formats.*"], layers["convert.cli"])]
    assert cycles(graph) == [["formats.names", "formats.torchzip"]]
