"""The files a stage runs: the import closure of ``stages/<stage>.py`` inside ``interpipe/`` and ``stages/``.

Imports are read from the source (every ``import``/``from`` statement, including those inside
functions, which is how the library defers heavy imports), so the closure needs no execution.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("interpipe", "stages")


def module_file(module: str) -> Path | None:
    """The source file of a first-party module (``a.b`` -> ``a/b.py`` or ``a/b/__init__.py``)."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*module.split("."))
    if base.with_suffix(".py").exists():
        return base.with_suffix(".py")
    if (base / "__init__.py").exists():
        return base / "__init__.py"
    return None


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # `from pkg import module`
    return found


def import_closure(entry: str | Path) -> set[Path]:
    """Every first-party file reachable from ``entry`` by imports (parent packages' ``__init__`` included)."""
    todo, seen = [Path(entry).resolve()], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in _imported_modules(path):
            parts = module.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                target = module_file(".".join(parts[:i]))
                if target is not None and target not in seen:
                    todo.append(target)
    return {p.relative_to(ROOT) for p in seen}


def minimal_deps(files: set[Path]) -> list[str]:
    """The closure as DVC deps: a folder where every ``.py`` file in it (recursively) is in the closure."""
    files = {ROOT / f for f in files}
    deps: list[str] = []

    def walk(folder: Path) -> None:
        sources = sorted(folder.rglob("*.py"))
        if sources and all(f in files for f in sources):
            deps.append(str(folder.relative_to(ROOT)))
            return
        for f in sorted(folder.glob("*.py")):
            if f in files:
                deps.append(str(f.relative_to(ROOT)))
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.name != "__pycache__"):
            walk(sub)

    for package in PACKAGES:
        walk(ROOT / package)
    return deps


if __name__ == "__main__":  # print each stage's deps, to paste into dvc.yaml
    for stage in sorted(p.stem for p in (ROOT / "stages").glob("[!_]*.py") if p.stem != "schema"):
        print(stage, minimal_deps(import_closure(ROOT / "stages" / f"{stage}.py")))
