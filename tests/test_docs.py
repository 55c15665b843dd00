"""The code in the README and the tutorial runs, and prints what they say it prints."""

from __future__ import annotations

import ast
import asyncio
import importlib
import inspect
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hearthsync import Peer, context
from tests.test_household import ENV, Robot, hearth

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


def _documented_calls(doc: str) -> list[tuple[str, str]]:
    """Every ``name(params)`` (``await``, ``Peer.`` allowed) quoted in ``doc``."""
    text = (ROOT / doc).read_text()
    pattern = r"`(?:await |async with |peer = await )?(?:Peer\.)?(\w+)\(([^`]*?)\)(?: as peer)?`"
    return re.findall(pattern, text)


def _parameters(listed: str) -> dict[str, str | None]:
    """``a, *, b=1, **c`` -> {"a": None, "b": "1", "c": None}: names and documented defaults."""
    found: dict[str, str | None] = {}
    depth, start = 0, 0
    for i, char in enumerate(listed + ","):
        depth += (char in "([{") - (char in ")]}")
        if char == "," and depth == 0:
            item = listed[start:i].strip().lstrip("*")
            start = i + 1
            if item and item != "...":
                name, _, default = item.partition("=")
                found[name.strip()] = default.strip() or None
    return found


def _same_default(documented: str, real: object) -> bool:
    try:
        return bool(ast.literal_eval(documented) == real)
    except ValueError:  # a name: time.time, asyncio.to_thread
        return documented.rsplit(".", 1)[-1] == getattr(real, "__name__", repr(real))


@pytest.mark.parametrize(
    ("doc", "owner"), [("docs/reference/peer.md", Peer), ("docs/reference/context.md", context)]
)
def test_documented_signatures_are_the_codes(doc: str, owner: object) -> None:
    """Every call the reference spells out has exactly the parameters, and the defaults, that
    the code has (context.md gave `explain` no `task` and `policy=DEFAULT_POLICY` for what is
    the household's policy in force: found by a review of the docs)."""
    wrong = []
    for name, listed in _documented_calls(doc):
        function = getattr(owner, name, None)
        if not inspect.isfunction(function) and not inspect.ismethod(function):
            continue
        real = inspect.signature(function).parameters
        if listed == "...":  # Peer.start(...): "the same" as Peer.open
            continue
        documented = _parameters(listed)
        named = {n for n, p in real.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        named -= {"self", "cls"}
        takes_any = any(p.kind is p.VAR_KEYWORD for p in real.values())
        if missing := named - documented.keys():
            wrong.append(f"{doc}: {name}() does not list {sorted(missing)}")
        if not takes_any and (extra := documented.keys() - named - {""}):
            wrong.append(f"{doc}: {name}() lists {sorted(extra)}, which it does not take")
        for param, default in documented.items():
            if default is None or param not in real:
                continue
            if not _same_default(default, real[param].default):
                wrong.append(
                    f"{doc}: {name}({param}={default}), the code's is {real[param].default!r}"
                )
    assert not wrong, "\n".join(wrong)


def test_every_public_peer_member_is_in_the_reference() -> None:
    text = (ROOT / "docs" / "reference" / "peer.md").read_text()
    public = [name for name in dir(Peer) if not name.startswith("_")]
    assert [name for name in public if not re.search(rf"`[^`]*\b{name}\b", text)] == []


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as '-'."""
    headings = re.findall(r"^#+ (.*)$", page.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def _exists(dotted: str) -> bool:
    """``hearthsync.a.b.c``: the longest importable module, then attributes down to ``c``."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            if not hasattr(found, attribute):
                return False
            found = getattr(found, attribute)
        return True
    return False


def test_what_the_docs_cite_exists() -> None:
    """Every relative link (and its anchor), repository path, test name and ``hearthsync.``
    name that a page of the docs cites is there: a renamed test or a moved module left pages
    pointing at nothing (found by a review of the docs)."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("*.py"))
    broken = []
    for page in pages:
        text = page.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://")):
                continue
            file, _, anchor = target.partition("#")
            linked = (page.parent / file).resolve() if file else page
            if not linked.exists():
                broken.append(f"{page.name}: link {target}")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                broken.append(f"{page.name}: anchor {target}")
        for path in re.findall(r"`((?:tests|src|protocol|docs|examples)/[\w/.\-]+)`", text):
            if not (ROOT / path).exists():
                broken.append(f"{page.name}: path {path}")
        for test in re.findall(r"`(test_\w+)`", text):
            if f"def {test}(" not in tests:
                broken.append(f"{page.name}: test {test}")
        for name in re.findall(r"`(hearthsync(?:\.\w+)+)", text):
            if not _exists(name):
                broken.append(f"{page.name}: name {name}")
    assert broken == []


async def test_the_household_tutorial_asks_a_running_robot(tmp_path: Path) -> None:
    """The tutorial's Python asks a real ``hearth run`` for a context over its HTTP API, as
    robot software does while the robot syncs (the tutorial never showed how: found by a
    review of the docs), and prints the preference the robot was told."""
    (script,) = python_blocks("docs/tutorial/household.md")
    kitchen = tmp_path / "robots" / "kitchen"
    hearth("init", str(kitchen), "--household", "Our Home", "--device", "kitchen")
    robot = await Robot.start(kitchen, "--no-mdns", "--api", "127.0.0.1:0")
    try:
        assert await robot.ask("user alice Alice") == "ACK user alice"
        assert (await robot.ask('pref alice beverage/coffee "oat latte"')).startswith("ACK")
        (tmp_path / "ask.py").write_text(textwrap.dedent(script))
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "ask.py"], cwd=tmp_path, capture_output=True,
            text=True, timeout=120, env=ENV,
        )  # fmt: skip
    finally:
        assert await robot.stop() == 0
    assert done.returncode == 0, done.stderr
    assert "beverage/coffee: oat latte" in done.stdout
