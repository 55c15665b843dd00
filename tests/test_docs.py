"""The code in the README and the tutorial runs, and prints what they say it prints."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(doc: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / doc).read_text(), re.S)


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ("README.md", ["green-mug", "the green mug"]),
        ("docs/tutorial/first-robot.md", ["weekday oat latte", "weekend cortado", "Saturday"]),
    ],
)
def test_documented_example_runs(doc: str, expected: list[str], tmp_path: Path) -> None:
    (script,) = python_blocks(doc)
    (tmp_path / "example.py").write_text(script)
    done = subprocess.run(
        [sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    for text in expected:
        assert text in done.stdout


def test_examples_run(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "kitchen_robot.py"), str(tmp_path / "k")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "weekdays: oat latte; mug: green-mug (on shelf-2)" in done.stdout
    assert "the green mug, not the blue one" in done.stdout
