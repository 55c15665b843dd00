"""Counters of the local HTTP API, written out in the Prometheus text format (version 0.0.4).

Route labels are the route templates (``/context``), never raw paths, and an unmatched path
counts as ``other``: a client cannot grow the label set.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

#: upper bounds, in seconds, of the buckets of the context latency histogram
BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


@dataclass
class Metrics:
    requests: Counter[tuple[str, int]] = field(default_factory=Counter)
    context_buckets: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))
    context_count: int = 0
    context_seconds: float = 0.0

    def request(self, route: str, status: int) -> None:
        self.requests[(route, status)] += 1

    def context(self, seconds: float) -> None:
        self.context_count += 1
        self.context_seconds += seconds
        first = bisect.bisect_left(BUCKETS, seconds)
        for i in range(first, len(BUCKETS)):
            self.context_buckets[i] += 1

    def render(self, users: int, documents: int) -> str:
        lines = [
            "# HELP hearth_requests_total HTTP requests answered, by route and status.",
            "# TYPE hearth_requests_total counter",
        ]
        for (route, status), count in sorted(self.requests.items()):
            lines.append(f'hearth_requests_total{{route="{route}",status="{status}"}} {count}')
        lines += [
            "# HELP hearth_context_seconds Time to assemble a context.",
            "# TYPE hearth_context_seconds histogram",
        ]
        for bound, count in zip(BUCKETS, self.context_buckets, strict=True):
            lines.append(f'hearth_context_seconds_bucket{{le="{bound}"}} {count}')
        lines += [
            f'hearth_context_seconds_bucket{{le="+Inf"}} {self.context_count}',
            f"hearth_context_seconds_sum {self.context_seconds:.6f}",
            f"hearth_context_seconds_count {self.context_count}",
            "# HELP hearth_users Users the household serves.",
            "# TYPE hearth_users gauge",
            f"hearth_users {users}",
            "# HELP hearth_documents Documents this robot holds.",
            "# TYPE hearth_documents gauge",
            f"hearth_documents {documents}",
        ]
        return "\n".join(lines) + "\n"
