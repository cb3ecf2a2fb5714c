"""The package's layering, read statically from the source (``ast``), for every module.

Every ``import`` of every module under ``kvinfo/`` counts, including the ones inside
functions (lazy imports are how an import circle hides). Modules are collapsed to their
*unit*: the subpackage (``kvinfo.codecs.quant.uniform`` -> ``codecs``) or the top-level
module (``kvinfo.results`` -> ``results``). The tests assert:

* every unit has a layer in :data:`LAYERS` (a new subpackage must be placed);
* the unit graph has no cycle, and every edge goes to the same or a lower layer:
  dumps -> analysis / codecs / kernels -> bench / evaluate -> report -> commands / cli;
* ``kernels`` is a leaf: it imports no other kvinfo unit except ``errors``;
* no module imports another unit's underscore module or underscore name, or reaches
  for an underscore attribute that only another unit defines (``codec._parse``).

The root package's own private helpers (``kvinfo._paths``, ``kvinfo._version``) are
shared by every layer and are not "another package's" private modules.
"""

from __future__ import annotations

import ast
import functools
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kvinfo"

#: the layer of every unit; an import may only go to the same or a lower layer
LAYERS = {
    # foundation: kvinfo's shared top-level helpers (import nothing above them)
    "errors": 0,
    "_version": 0,
    "_paths": 0,
    "tables": 0,  # table and number formatting
    "dumps": 1,
    "cluster": 1,  # where tasks run: in-process, a Dask LocalCluster or a scheduler
    "analysis": 2,
    "codecs": 2,
    "remat": 2,  # rematerializing codecs (model-aware; import dumps and codecs)
    "kernels": 2,
    "results": 2,  # the one results schema
    "storage": 2,  # numcodecs / zarr codecs and dump conversion (over dumps and codecs)
    "bench": 3,
    "evaluate": 3,
    "testing": 3,  # the reusable codec contract (kvinfo.testing)
    "report": 4,
    "commands": 5,
    "cli": 5,
    "__init__": 6,  # the package facade re-exports from every layer
    "__main__": 6,
}
#: units that may import only these others
LEAVES = {"kernels": {"errors"}}
#: units whose own root-level underscore modules every layer may use
ROOT_PRIVATE = {"_paths", "_version"}


# ---------------------------------------------------------------------------------------
# the static import graph
# ---------------------------------------------------------------------------------------
def _modules(root: Path) -> dict[str, tuple[Path, bool]]:
    """``dotted name -> (path, is_package)`` of every module under ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_pkg)
    return out


@functools.cache
def _tree(path: Path, mtime_ns: int) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _parse(path: Path) -> ast.Module:
    return _tree(path, path.stat().st_mtime_ns)


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def import_edges(root: Path = PACKAGE):
    """Every import of a kvinfo module: ``(importer, target module, name or None, line)``.

    ``from X import Y`` gives target ``X.Y`` when that is a module, else target ``X`` with
    name ``Y``. Relative imports are resolved against the importer's package.
    """
    mods = _modules(root)
    top = root.name
    edges = []
    for name, (path, is_pkg) in mods.items():
        pkg = name if is_pkg else name.rpartition(".")[0]
        for node in ast.walk(_parse(path)):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == top or alias.name.startswith(top + "."):
                        edges.append((name, alias.name, None, node.lineno))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if not (target == top or target.startswith(top + ".")):
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if sub in mods:
                        edges.append((name, sub, None, node.lineno))
                    else:
                        edges.append((name, target, alias.name, node.lineno))
    return edges


def unit_graph(root: Path = PACKAGE):
    """``unit -> {imported unit: [where, ...]}`` without self-edges."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for src, dst, _name, line in import_edges(root):
        a, b = _unit(src), _unit(dst)
        if a != b:
            graph[a][b].append(f"{src}:{line}")
    return graph


def find_cycle(graph) -> list[str] | None:
    """One cycle of ``graph`` as a list of units (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u):
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state:
                found = visit(v)
                if found:
                    return found
        stack.pop()
        state[u] = 2
        return None

    for u in sorted(graph):
        if u not in state:
            found = visit(u)
            if found:
                return found
    return None


def layer_violations(root: Path = PACKAGE) -> list[str]:
    graph = unit_graph(root)
    bad = []
    for a, targets in graph.items():
        for b, where in targets.items():
            if a in LAYERS and b in LAYERS and LAYERS[b] > LAYERS[a]:
                bad.append(f"{a} (layer {LAYERS[a]}) imports {b} (layer {LAYERS[b]}) at "
                           f"{', '.join(where)}")
            if a in LEAVES and b not in LEAVES[a]:
                bad.append(f"{a} must be a leaf but imports {b} at {', '.join(where)}")
    return bad


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def _defined_private_names(root: Path) -> dict[str, set[str]]:
    """Per unit, the underscore names it defines (functions, classes, assignments)."""
    out: dict[str, set[str]] = defaultdict(set)
    for name, (path, _) in _modules(root).items():
        unit = _unit(name)
        for node in ast.walk(_parse(path)):
            names = []
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.append(node.name)
            elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    for sub in ast.walk(t):
                        if isinstance(sub, ast.Name):
                            names.append(sub.id)
                        elif isinstance(sub, ast.Attribute):
                            names.append(sub.attr)
            out[unit].update(n for n in names if _private(n))
    return out


def private_crossings(root: Path = PACKAGE) -> list[str]:
    """Imports of another unit's underscore modules or names, and attribute accesses
    ``x._name`` where only other units define ``_name``."""
    bad = []
    for src, dst, name, line in import_edges(root):
        a, b = _unit(src), _unit(dst)
        if a == b or b in ROOT_PRIVATE:
            continue
        parts = dst.split(".")[1:]
        if any(_private(p) for p in parts) or (name is not None and _private(name)):
            bad.append(f"{src}:{line} imports {dst}{'.' + name if name else ''}")
    defined = _defined_private_names(root)
    for mod, (path, _) in _modules(root).items():
        unit = _unit(mod)
        for node in ast.walk(_parse(path)):
            if not (isinstance(node, ast.Attribute) and _private(node.attr)):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            owners = {u for u, names in defined.items() if node.attr in names}
            if owners and unit not in owners:
                bad.append(f"{mod}:{node.lineno} uses {ast.unparse(node)} (private to "
                           f"{', '.join(sorted(owners))})")
    return bad


# ---------------------------------------------------------------------------------------
# the tests
# ---------------------------------------------------------------------------------------
def test_every_unit_has_a_layer():
    units = {_unit(m) for m in _modules(PACKAGE)}
    missing = sorted(units - set(LAYERS))
    assert not missing, f"place these in LAYERS of {__file__}: {missing}"
    assert {"dumps", "analysis", "codecs", "kernels", "report", "commands"} <= units


def test_no_import_cycles_between_subpackages():
    cycle = find_cycle(unit_graph())
    graph = unit_graph()
    assert cycle is None, "import cycle " + " -> ".join(cycle) + ": " + "; ".join(
        f"{a}->{b} at {', '.join(graph[a][b])}" for a, b in zip(cycle, cycle[1:], strict=False)
    )


def test_imports_follow_the_layers_and_kernels_is_a_leaf():
    assert layer_violations() == []


def test_no_cross_package_private_imports():
    assert private_crossings() == []


# the checks themselves, on small fake packages (so that they can fail)
def _fake(tmp_path, files: dict[str, str]) -> Path:
    root = tmp_path / "kvinfo"
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


@pytest.mark.parametrize("lazy", [False, True])
def test_checks_catch_a_cycle_and_a_non_leaf_kernel(tmp_path, lazy):
    indent = "def f():\n    " if lazy else ""
    root = _fake(tmp_path, {
        "__init__.py": "",
        "errors.py": "",
        "codecs/__init__.py": "from ..kernels import gpu\n",
        "kernels/__init__.py": "",
        "kernels/gpu.py": indent + "from ..codecs import get_codec\n",
    })
    assert find_cycle(unit_graph(root)) in (["codecs", "kernels", "codecs"],
                                            ["kernels", "codecs", "kernels"])
    assert any("kernels must be a leaf but imports codecs" in v for v in layer_violations(root))


def test_checks_catch_a_lower_layer_importing_a_higher_one(tmp_path):
    root = _fake(tmp_path, {
        "__init__.py": "",
        "report/__init__.py": "",
        "dumps/__init__.py": "def f():\n    import kvinfo.report\n",
    })
    assert any(v.startswith("dumps (layer 1) imports report (layer 4)")
               for v in layer_violations(root))


def test_checks_catch_private_modules_names_and_attributes(tmp_path):
    root = _fake(tmp_path, {
        "__init__.py": "",
        "_paths.py": "def check(): pass\n",
        "codecs/__init__.py": "",
        "codecs/_container.py": "X = 1\n",
        "codecs/quant/__init__.py": "",
        "codecs/quant/_base.py": "class Q:\n    def _parse(self): pass\n",
        "analysis/__init__.py": "from ._slab import TokenCost\n",
        "analysis/_slab.py": "class TokenCost: pass\ndef _helper(): pass\n",
        "kernels/__init__.py": "",
        "kernels/gpu.py": ("from ..codecs import _container as C\n"
                           "from ..analysis import _helper\n"
                           "from .._paths import check\n"
                           "def f(codec, data):\n    return codec._parse(data)\n"),
        "bench.py": "from .codecs.quant._base import Q\nfrom .analysis import TokenCost\n",
    })
    bad = private_crossings(root)
    assert any("kvinfo.kernels.gpu:1 imports kvinfo.codecs._container" in v for v in bad)
    assert any("kvinfo.kernels.gpu:2 imports kvinfo.analysis._helper" in v for v in bad)
    assert any("codec._parse (private to codecs)" in v for v in bad)
    assert any("kvinfo.bench:1 imports kvinfo.codecs.quant._base.Q" in v for v in bad)
    assert not any("_paths" in v or "TokenCost" in v for v in bad), bad


# ---------------------------------------------------------------------------------------
# the drawing in docs/architecture.md and the README names real boxes
# ---------------------------------------------------------------------------------------
#: boxes the engines work (bench/ as a package, tables.py, codecs/labels.py, analysis/
#: engine.py) creates; they may be missing only while kvinfo/bench/ is not yet a package
PENDING_ENGINES = {"bench/", "tables.py", "codecs/labels.py", "analysis/engine.py"}


def _drawn_paths(text: str) -> set[str]:
    import re

    boxes = set()
    for block in re.findall(r"```text\n(.*?)```", text, re.S):
        boxes.update(re.findall(r"[A-Za-z_][\w/]*(?:/|\.py)(?![\w/])", block))
    # the architecture table's first two columns name boxes too
    for cell in re.findall(r"^\|[^|]*\| `([^`]+)`", text, re.M):
        boxes.update(c.strip("` ") for c in cell.split(","))
    return boxes


@pytest.mark.parametrize("doc", ["docs/architecture.md", "README.md"])
def test_every_box_in_the_drawing_exists(doc):
    text = (PACKAGE.parent / doc).read_text()
    boxes = _drawn_paths(text)
    assert {"dumps/", "kernels/", "report/", "cli.py", "results.py"} <= boxes, boxes
    missing = {b for b in boxes if not (PACKAGE / b.rstrip("/")).exists()
               or (b.endswith("/") and not (PACKAGE / b / "__init__.py").exists())}
    if (PACKAGE / "bench" / "__init__.py").exists():
        assert not missing, f"{doc} draws boxes that are not in kvinfo/: {sorted(missing)}"
    else:
        assert missing <= PENDING_ENGINES, sorted(missing - PENDING_ENGINES)
