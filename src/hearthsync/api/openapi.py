"""The OpenAPI document of the local HTTP API, as kept in ``docs/reference/openapi.json``.

    python -m hearthsync.api.openapi > docs/reference/openapi.json

The document is derived from the pydantic models (`hearthsync.api.schemas`) by FastAPI; the
test suite checks that the committed copy is the one the code derives.
"""

from __future__ import annotations

import json
from typing import Any, cast

from hearthsync.api.app import make_app
from hearthsync.peer import Peer


def document() -> dict[str, Any]:
    """The API's OpenAPI document (building it calls no route, so no peer is needed)."""
    spec: dict[str, Any] = make_app(cast(Peer, None), "0" * 32).openapi()
    return spec


def text() -> str:
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    print(text(), end="")
