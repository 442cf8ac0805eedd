"""One-way layers: flows → tasks → gru4rec. The library loads no orchestration package."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ORCHESTRATION = ("prefect", "mlflow", "great_expectations", "typer")


def _library_modules() -> list[str]:
    pkg = REPO / "gru4rec"
    mods = []
    for path in sorted(pkg.rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods.append(".".join(parts))
    return mods


def test_importing_every_library_module_loads_no_orchestration_package():
    mods = _library_modules()
    assert "gru4rec.model" in mods and "gru4rec.data.readers" in mods
    code = (
        "import importlib, json, sys\n"
        f"for m in {mods!r}: importlib.import_module(m)\n"
        f"print(json.dumps([p for p in {ORCHESTRATION!r} if p in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_dependencies_point_one_way():
    forbidden = {"gru4rec": {"flows", "tasks", *ORCHESTRATION}, "tasks": {"flows"}}
    for layer, banned in forbidden.items():
        for path in (REPO / layer).rglob("*.py"):
            bad = _imported_roots(path) & banned
            assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"
