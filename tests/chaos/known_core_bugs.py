"""Core bugs the chaos harness found and the core has not fixed yet, and how to recognise them.

Each entry has a strict ``xfail`` reproducer in ``test_core_bugs.py``.  The chaos tests accept a
failing schedule only when *every* problem it reports is one of these; anything else fails
them.  When the core fixes a bug its reproducer passes, the strict ``xfail`` turns that into a
failure, and whoever removes the ``xfail`` removes the entry here too: the chaos tests then
hold the core to the fix.
"""

from __future__ import annotations

import re

#: name -> (what goes wrong, the reproducer that must stay failing while this is listed)
KNOWN = {
    "slot-index-after-delete-only-update": (
        "a remote update that only deletes a register's current value (its replacement is "
        "still on its way) leaves the slot map's index naming a key the Yrs map no longer "
        "holds: reads and writes of that register raise KeyError, and the group commit holding "
        "such a write fails for every writer in it",
        "test_core_bugs.py::test_a_register_survives_an_update_that_only_deletes_its_value",
    ),
    "content-beyond-a-clock-gap": (
        "an update merged while an earlier one of the same author is missing shows its content "
        "although the state vector does not count it; when the missing update can no longer "
        "come (its author was revoked meanwhile), the robots' state vectors agree, the "
        "inventory sees nothing to repair, and their content differs for good",
        "test_core_bugs.py::test_equal_state_vectors_mean_equal_content",
    ),
}

_KEY_ERROR_ON_SLOT = re.compile(r"KeyError[(:] ?'[^']*(\\x1f|\x1f)")
_ONLY_REVOKED_ENTRIES = re.compile(
    r"^divergence: r\d+ and r\d+ differ in \S+: (same state vector, other content|held by "
    r"only one of them) \(entries by r\d+ \(revoked\)\)$"
)
NOT_CONVERGED = "did not converge within the settle limit after the heal"


def explain(problem: str) -> str | None:
    """The known bug that accounts for one reported problem, or None."""
    if problem.startswith("error:") and _KEY_ERROR_ON_SLOT.search(problem):
        return "slot-index-after-delete-only-update"
    if _ONLY_REVOKED_ENTRIES.match(problem):
        return "content-beyond-a-clock-gap"
    return None


def unexplained(problems: list[str]) -> list[str]:
    """The problems of one schedule no known bug accounts for.  A schedule that did not
    converge is accounted for only by a divergence of a revoked robot's entries (the entries
    waiting for an update that can no longer come)."""
    causes = {explain(p) for p in problems}
    left = [p for p in problems if explain(p) is None]
    if "content-beyond-a-clock-gap" in causes:
        left = [p for p in left if p != NOT_CONVERGED]
    return left
