"""The layering of docs/architecture.md, checked on the import graph: no cycle in src/ or benchmarks/, no arrow
that runs back up a layer, no grid script importing another, no module importing another package's private
module."""

import ast
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, SHARED, shared_data

# (importer prefix, imported prefix) pairs that would run back up the layers
FORBIDDEN = [
    ("gentune.diagnostics", "gentune.regularizers"), ("gentune.diagnostics", "gentune.train"),
    ("gentune.data", "gentune.models"), ("gentune.data", "gentune.objectives"), ("gentune.data", "gentune.tasks"),
    ("gentune.models", "gentune.objectives"), ("gentune.models", "gentune.regularizers"),
    ("gentune.models", "gentune.train"), ("gentune.models", "gentune.tasks"),
    ("gentune.objectives", "gentune.regularizers"), ("gentune.objectives", "gentune.train"),
    ("gentune.objectives", "gentune.tasks"), ("gentune.regularizers", "gentune.train"),
    ("gentune.regularizers", "gentune.tasks"), ("gentune.train", "gentune.tasks"), ("gentune.train", "gentune.cli"),
    ("gentune.tasks", "gentune.cli"), ("gentune.integrations", "gentune.tasks"),
    ("gentune.tasks", "gentune.search"), ("gentune.train", "gentune.search"), ("gentune.search", "gentune.cli"),
    ("gentune.regularizers", "gentune.search"), ("gentune.models", "gentune.search"),
    ("gentune.tensors", "gentune."),
    *[(neutral, f"gentune.{layer}") for neutral in ("gentune.fs", "gentune.serial")
      for layer in ("data", "models", "objectives", "regularizers", "train", "tasks", "diagnostics", "config",
                    "registry", "cli")],
]
GRIDS = ["finetune_grid", "pretrain_grid", "radreg_grid", "diagnostics_study", "smart_retest", "fewshot_grid",
         "kernel_grid", "kernel_speed", "ner_grid", "point_grid", "kshot_grid", "radreg_estimator",
         "radreg_retest"]


def _imports_tool(root: Path, package: str, forbidden: list[tuple[str, str]]):
    tool = shared_data(SHARED / "tools" / "imports.py", "the workplace's import-graph tool")
    return subprocess.run([sys.executable, str(tool), str(root), package, *(f"{a}->{b}" for a, b in forbidden)],
                          capture_output=True, text=True, timeout=120)


def test_src_has_no_cycle_and_no_arrow_back_up():
    r = _imports_tool(ROOT / "src", "gentune", FORBIDDEN)
    assert r.returncode == 0 and " 0 cycles" in r.stdout, r.stdout + r.stderr


def test_benchmarks_have_no_cycle_and_no_grid_imports_another():
    forbidden = [(a, b) for a in GRIDS for b in GRIDS if a != b]
    r = _imports_tool(ROOT / "benchmarks", "benchmarks", forbidden)
    assert r.returncode == 0 and " 0 cycles" in r.stdout, r.stdout + r.stderr


def test_no_module_imports_another_packages_private_module():
    """``from gentune.x._y import ...`` (or a relative ``.._y``) from outside x: a private module is its package's
    own business; shared helpers live in a neutral public module (tensors.py, fs.py)."""
    bad = []
    src = ROOT / "src" / "gentune"
    for f in src.rglob("*.py"):
        package = f.parent.relative_to(src.parent).parts  # ("gentune", "regularizers")
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = list(package[:len(package) - (node.level - 1)]) if node.level else []
                parts = base + (node.module.split(".") if node.module else [])
                names = [parts + [a.name] for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name.split(".") for a in node.names]
            else:
                continue
            for name in names:
                if not name or name[0] != "gentune":
                    continue
                for i, part in enumerate(name[1:], 1):
                    if not part.startswith("_") or part.startswith("__"):
                        continue
                    # the package that owns the private thing: a module's own package, or for a name inside a
                    # module, that module's package
                    module_file = src.parent.joinpath(*name[:i]).with_suffix(".py")
                    owner = tuple(name[:i - 1]) if module_file.is_file() else tuple(name[:i])
                    if owner != package:
                        bad.append(f"{f.relative_to(ROOT)}: {'.'.join(name)}")
    assert bad == []
