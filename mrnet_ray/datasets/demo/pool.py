"""Render many demo pieces in a process pool, class by class, until each has its clips.

Some sources fail (about one in ten: scores music21 cannot convert, pieces shorter than a
clip); each failure, and each piece that gives fewer clips than it might, lets the next
candidate of its class start, so classes end up with balanced clip counts.
"""

from __future__ import annotations

import multiprocessing
from collections import Counter, defaultdict, deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from mrnet_ray.datasets.demo.render import PieceResult, RenderJob, render_piece
from mrnet_ray.errors import UserError

ABORT_AFTER = 10
"""Stop when this many renders failed and none succeeded: the tools, not the scores, fail."""


def render_classes(
    queues: dict[str, deque[RenderJob]],
    *,
    clips_per_class: int,
    clips_per_piece: int,
    workers: int,
    progress: bool,
) -> tuple[dict[str, list[PieceResult]], list[PieceResult]]:
    """Render each class's candidate jobs in order until it has ``clips_per_class`` clips.

    Each finished piece, failed or not, lets the next candidate of its class start while the
    class's clips (counting ``clips_per_piece`` for each piece in flight) fall short. Returns
    the pieces kept per class, the shortest run of successes in candidate order that reaches
    the target (later ones rendered meanwhile are deleted, so the result does not depend on
    which worker finished first), and the failures. A class gives up after ``max(10, n)``
    failures or ``3 n`` pieces, ``n`` being the fewest pieces that could reach the target.
    """
    target = clips_per_class
    min_pieces = -(-clips_per_class // clips_per_piece)
    max_pieces, max_failures = 3 * min_pieces, max(10, min_pieces)
    done_ok: dict[str, list[tuple[int, RenderJob, PieceResult]]] = defaultdict(list)
    failed: list[PieceResult] = []
    failures: Counter[str] = Counter()
    in_flight: Counter[str] = Counter()
    counted: Counter[str] = Counter()  # clips shown on the progress bar, per class
    rank = 0
    # spawn, not fork: the caller may hold threads (Ray, torch) that a fork would copy mid-lock
    context = multiprocessing.get_context("spawn")
    bar = tqdm(total=target * len(queues), desc="demo corpus", unit="clip", disable=not progress)
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        pending: dict[Any, tuple[int, RenderJob]] = {}

        def wants_more(label: str) -> bool:
            got = done_ok[label]
            clips = sum(len(r.clips) for _, _, r in got) + in_flight[label] * clips_per_piece
            return (
                bool(queues[label])
                and failures[label] < max_failures
                and clips < target
                and len(got) + in_flight[label] < max_pieces
            )

        def submit(label: str) -> None:
            nonlocal rank
            job = queues[label].popleft()
            rank += 1
            pending[pool.submit(render_piece, job)] = (rank, job)
            in_flight[label] += 1

        while any(wants_more(label) for label in queues):  # round robin over the classes
            for label in queues:
                if wants_more(label):
                    submit(label)
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                order, job = pending.pop(future)
                label = job.source.label
                in_flight[label] -= 1
                result = future.result()
                if result.error is None:
                    done_ok[label].append((order, job, result))
                    # a class's last piece may overshoot its target; the bar counts kept clips
                    bar.update(min(len(result.clips), target - counted[label]))
                    counted[label] = min(target, counted[label] + len(result.clips))
                else:
                    failed.append(result)
                    failures[label] += 1
                    bar.set_postfix(skipped=len(failed))
                while wants_more(label):
                    submit(label)
            if len(failed) >= ABORT_AFTER and not any(done_ok.values()):
                pool.shutdown(wait=True, cancel_futures=True)
                bar.close()
                raise UserError(
                    f"demo corpus: the first {len(failed)} renders all failed, e.g. "
                    f"{failed[0].source.path}: {failed[0].error}"
                )
    bar.close()
    kept: dict[str, list[PieceResult]] = {}
    for label, results in done_ok.items():
        kept[label], clips = [], 0
        for _, job, result in sorted(results, key=lambda x: x[0]):
            if clips >= target:  # rendered while earlier pieces were in flight: not needed
                for clip in result.clips:
                    (Path(job.out_dir) / clip).unlink()
                continue
            kept[label].append(result)
            clips += len(result.clips)
    return kept, failed
