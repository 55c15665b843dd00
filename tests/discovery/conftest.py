"""Discovery fixtures: a service type unique to each test, and loopback Discovery objects.

Every test browses its own ``_h<hex>._tcp.local.`` type, so concurrent test runs on this
machine (and earlier tests' cached records) can never answer it.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest

from hearthsync.discovery import Discovery
from tests.discovery.support import TAG


@pytest.fixture
def service_type() -> str:
    return f"_h{secrets.token_hex(4)}._tcp.local."


@pytest.fixture
def local(service_type: str) -> Callable[..., Discovery]:
    """``local("kitchen", 9001, **kw)``: a Discovery on loopback with this test's type."""
    return partial(_loopback, service_type=service_type)


def _loopback(device_id: str, port: int, tag: str = TAG, **kwargs: Any) -> Discovery:
    return Discovery(device_id, port, tag, interfaces=["127.0.0.1"], **kwargs)
