"""The prepare run's ledger: a tiny Ray actor that map tasks report per-track outcomes to.

It lives in its own module, which imports nothing but Ray, so the actor's process starts in
a fraction of a second instead of importing torch like the map tasks' processes do.
"""

from __future__ import annotations

import ray


@ray.remote(num_cpus=0)
class Ledger:
    """Segments per track and skip reasons, keyed by track index (so retried tasks are harmless)."""

    def __init__(self) -> None:
        self.segments: dict[int, int] = {}
        self.skipped: dict[int, str] = {}

    def record(self, segments: dict[int, int], skipped: dict[int, str]) -> None:
        self.segments.update(segments)
        self.skipped.update(skipped)

    def result(self) -> tuple[dict[int, int], dict[int, str]]:
        return self.segments, self.skipped
