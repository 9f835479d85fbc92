"""The trainer's imports: train/ gets scoring, selection and pruning injected, never imports them."""
import ast
from pathlib import Path

import dprune

TRAIN = Path(dprune.__file__).parent / "train"
FORBIDDEN = ("dprune.pruning", "dprune.scoring", "dprune.select")


def _dprune_imports(path: Path) -> set[str]:
    """Absolute names of the ``dprune`` modules a file of ``dprune/train`` imports (relative ones resolved)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from ..x import y (in dprune/train: level 1 is dprune.train, 2 is dprune)
                parent = ["dprune", "train"][: 3 - node.level]
                base = ".".join(parent + ([base] if base else []))
            names.add(base)
            names |= {f"{base}.{a.name}" for a in node.names}
    return {n for n in names if n == "dprune" or n.startswith("dprune.")}


def test_the_walk_sees_relative_and_absolute_imports(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("from ..scoring import api\nfrom . import loop\nimport dprune.select\nfrom .. import pruning\n")
    found = _dprune_imports(f)
    assert {"dprune.scoring", "dprune.train.loop", "dprune.select", "dprune.pruning"} <= found


def test_train_imports_no_pruning_scoring_or_select():
    files = sorted(TRAIN.glob("*.py"))
    assert len(files) >= 4
    bad = {f"{f.name}: {name}" for f in files for name in _dprune_imports(f)
           if any(name == m or name.startswith(m + ".") for m in FORBIDDEN)}
    assert not bad, sorted(bad)
