"""How the ``hearth`` command reaches a robot that is running: through its local HTTP API.

Two processes must never hold one store (each would keep its own memory of it), so while
``hearth run`` runs for a folder, ``hearth context``, ``hearth maintain`` and ``hearth forget``
ask it over the API, with the token from the folder, instead of opening the store themselves.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from hearthsync.api.server import TOKEN_FILE
from hearthsync.errors import HearthError, NotFoundError, ValidationError
from hearthsync.runner import RUN_FILE

TIMEOUT_S = 60.0


class ApiError(HearthError):
    """The running robot refused a request; ``status`` is the HTTP status it answered."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class RunningRobot:
    """A ``hearth run`` process of a folder, alive, serving its API."""

    pid: int
    base_url: str
    token: str

    def call(self, method: str, route: str, body: dict[str, Any] | None = None) -> Any:
        """One request; the decoded JSON answer, or `ApiError` naming what was refused."""
        try:
            with httpx.Client(base_url=self.base_url, timeout=TIMEOUT_S, trust_env=False) as client:
                answer = client.request(
                    method, route, json=body, headers={"Authorization": f"Bearer {self.token}"}
                )
        except httpx.HTTPError as exc:  # stopping, or run.json outlived its robot
            raise ApiError(f"the robot's API at {self.base_url} did not answer: {exc}", 0) from exc
        if answer.status_code >= 400:
            try:
                message = str(answer.json().get("error", answer.text))
            except ValueError:
                message = answer.text
            kind = {404: NotFoundError, 422: ValidationError}.get(answer.status_code)
            if kind is not None:
                raise kind(message)
            raise ApiError(
                f"the robot answered {answer.status_code}: {message}", answer.status_code
            )
        return answer.json()


def running_pid(folder: Path) -> int | None:
    """The pid of the ``hearth run`` of ``folder``, if one is alive."""
    try:
        pid = int(json.loads((folder / RUN_FILE).read_text()).get("pid", 0))
        os.kill(pid, 0)
    except (OSError, ValueError, TypeError, OverflowError):
        return None
    return pid


def running_robot(folder: Path) -> RunningRobot | None:
    """The running robot of ``folder`` with its API, if there is one."""
    pid = running_pid(folder)
    if pid is None:
        return None
    api = json.loads((folder / RUN_FILE).read_text()).get("api")
    if not api:
        return None
    host = f"[{api['host']}]" if ":" in api["host"] else api["host"]
    token = (folder / TOKEN_FILE).read_text().strip()
    return RunningRobot(pid, f"http://{host}:{api['port']}", token)
