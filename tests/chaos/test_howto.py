"""The Python examples of docs/how-to/chaos.md run, and print what the page says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

HOWTO = Path(__file__).resolve().parents[2] / "docs" / "how-to" / "chaos.md"


def examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", HOWTO.read_text(), re.S)


@pytest.mark.parametrize(
    ("index", "expected"),
    [(0, ["ok 4 schedules", "True"]), (1, ["converged, nothing lost"])],
)
@pytest.mark.timeout(120)
def test_the_how_to_examples_run(index: int, expected: list[str], tmp_path: Path) -> None:
    assert len(examples()) == 2
    script = tmp_path / "example.py"
    script.write_text(examples()[index])
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=110
    )
    assert done.returncode == 0, done.stderr
    for text in expected:
        assert text in done.stdout, done.stdout


def test_the_failure_the_how_to_reads_is_what_the_harness_prints() -> None:
    """The page's "Read a failure" block is a real run: its command fails, and prints the
    problems, the minimal fault trace and the replay the page shows (a new user found that
    the seed it named passed)."""
    block = re.search(r"```text\n\$ (hearth chaos .*?)\n\.\.\.\n(.*?)```", HOWTO.read_text(), re.S)
    assert block is not None
    command = block.group(1).replace("\\\n", " ").split()
    hearth = Path(sys.executable).with_name("hearth")
    done = subprocess.run(
        [str(hearth), *command[1:]], capture_output=True, text=True, timeout=110,
        env={"COLUMNS": "200", "PATH": str(hearth.parent)},
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    printed = " ".join(done.stdout.split())
    for line in block.group(2).splitlines():
        if line.strip() and not line.startswith("───"):
            assert " ".join(line.split()) in printed, line
