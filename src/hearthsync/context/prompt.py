"""Packing a context into prompt text within a token budget.

**The token estimate** is ``ceil(utf8_bytes / 3)`` per line, newline included.  Tokenizers of
the common model families average about four bytes per token in English prose, fewer in the
digits, dates and JSON a context is full of, and about three bytes (one CJK character) per token
in Chinese or Japanese; three bytes per token overestimates the first, fits the second and third,
and so a packed prompt fits the real budget of any of them.  The estimate is additive over
lines, so the whole text never costs more than the sum of what the packer counted.

**Packing** walks the sections in priority order and, within a section, its items in order,
adding every item (one line) that still fits and skipping any that does not; a section's heading
is added with its first item, never alone.  No item is ever cut in half: a line is in the prompt
whole, or not at all.  The header line is always first; if even it does not fit, the prompt is
empty.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

from hearthsync.errors import ValidationError

BYTES_PER_TOKEN = 3
MAX_TOKENS = 1_000_000


def estimate_tokens(text: str) -> int:
    """The documented estimate: ``ceil(utf8_bytes / 3)``."""
    return -(-len(text.encode()) // BYTES_PER_TOKEN)


def _cost(line: str) -> int:
    return estimate_tokens(line + "\n")


@dataclass(frozen=True, slots=True)
class Section:
    """A heading and its items' lines, most important first."""

    heading: str
    lines: Sequence[str]


def check_budget(max_tokens: int | None) -> int | None:
    if max_tokens is None:
        return None
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise ValidationError(
            f"max_tokens must be an integer, got {max_tokens!r:.40}", field="max_tokens"
        )
    if not 0 < max_tokens <= MAX_TOKENS:
        raise ValidationError(
            f"max_tokens must be between 1 and {MAX_TOKENS:,}, got {max_tokens}", field="max_tokens"
        )
    return max_tokens


def pack(header: str, sections: Sequence[Section], max_tokens: int | None) -> str:
    """The prompt: ``header``, then as many whole lines of ``sections`` as the budget holds.

    A budget too small for the header (who, which task, when, what was withheld) is refused:
    an empty prompt, which this returned before, handed a model no context and no sign of it."""
    budget = check_budget(max_tokens)
    left = sys.maxsize if budget is None else budget
    if _cost(header) > left:
        raise ValidationError(
            f"max_tokens {budget} is too small for this context: its header alone takes "
            f"{_cost(header)} tokens", field="max_tokens",
        )  # fmt: skip
    out = [header]
    left -= _cost(header)
    for section in sections:
        heading = f"## {section.heading}"
        opened = False
        for line in section.lines:
            item = "- " + " ".join(line.split())  # one item, one line
            cost = _cost(item) + (0 if opened else _cost(heading))
            if cost > left:
                continue
            if not opened:
                out.append(heading)
                opened = True
            out.append(item)
            left -= cost
    return "\n".join(out)
