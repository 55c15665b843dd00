"""STYLE §1: ``hearthsync.crypto`` does no I/O and reads neither a clock nor the OS generator."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import hearthsync.crypto

CRYPTO = Path(hearthsync.crypto.__file__).parent
FORBIDDEN_MODULES = {"asyncio", "socket", "time", "websockets", "aiosqlite", "zeroconf"}
FORBIDDEN_MODULES |= {"random", "secrets", "datetime", "os"}
#: names whose use means hidden randomness (SigningKey.generate, PrivateKey.generate, ...)
FORBIDDEN_CALLS = {"generate", "urandom", "random", "token_bytes", "randombytes", "encrypt"}
#: the documented edge: loading or creating the key file
EDGE = {"identity.py": {"os", "generate"}}


def _modules() -> list[Path]:
    return sorted(CRYPTO.glob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.name)
def test_crypto_module_is_sans_io(path: Path) -> None:
    allowed = EDGE.get(path.name, set())
    tree = ast.parse(path.read_text())
    imported: set[str] = set()
    called: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.Attribute):
            called.add(node.attr)
    assert not (imported & FORBIDDEN_MODULES) - allowed, path.name
    assert not (called & FORBIDDEN_CALLS) - allowed, path.name
