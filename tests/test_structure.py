"""Rooms a newcomer can find: no function in `app/`, `detector/` or `train/` is longer than 80
lines, so a change to one behaviour means reading one named part, not a 300-line closure."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 80


def long_functions(root: Path = ROOT, folders=("app", "detector", "train"), limit: int = MAX_LINES) -> list[str]:
    """Every function (nested ones too) longer than `limit` lines, from its `def` to its last line."""
    found = []
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > limit:
                        found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_in_app_detector_or_train_is_longer_than_80_lines():
    assert long_functions() == []


def test_the_check_finds_a_long_function_and_a_long_nested_one(tmp_path):
    (tmp_path / "app").mkdir()
    body = "".join(f"    x{i} = {i}\n" for i in range(80))
    (tmp_path / "app" / "m.py").write_text(f"def short():\n    pass\n\n\ndef long():\n{body}\n\n"
                                           f"class C:\n    def method(self):\n        def inner():\n"
                                           + body.replace("    x", "            x") + "        return inner\n")
    assert long_functions(tmp_path, ("app",)) == ["app/m.py:5 long (81 lines)", "app/m.py:89 method (83 lines)",
                                                  "app/m.py:90 inner (81 lines)"]
