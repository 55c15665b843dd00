"""The local HTTP API for robot stacks that are not written in Python.

    from hearthsync.api import make_app
    app = make_app(peer, token)     # serve on 127.0.0.1, e.g. with uvicorn

See docs/reference/context.md (the HTTP API) and `hearthsync.api.app`.
"""

from hearthsync.api.app import MAX_BODY, make_app

__all__ = ["MAX_BODY", "make_app"]
