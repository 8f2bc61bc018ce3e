"""Rejection sampling with a bound: generators draw until enough candidates pass a threshold,
report progress, and give up with the range of scores they saw when the threshold is out of reach."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TypeVar

from dataset.errors import DatasetError

T = TypeVar("T")
PROGRESS_SECONDS = 10.0


def sample_at_least(
    attempt: Callable[[], tuple[int, T | None]],
    count: int,
    *,
    minimum: int,
    max_attempts: int,
    what: str,
    option: str,
) -> list[T]:
    """`count` accepted items. `attempt()` draws one candidate and returns (its score, the item
    if score >= minimum else None). Fails after `max_attempts` rejections in a row, naming the
    scores seen and the `option` that sets `minimum`; prints progress every PROGRESS_SECONDS."""
    items: list[T] = []
    lowest, highest = None, None
    misses = attempts = 0
    start = last_report = time.monotonic()
    while len(items) < count:
        score, item = attempt()
        attempts += 1
        lowest = score if lowest is None else min(lowest, score)
        highest = score if highest is None else max(highest, score)
        if item is None:
            misses += 1
            if misses >= max_attempts:
                raise DatasetError(
                    f"no {what} reached {option} {minimum} in {max_attempts} draws in a row "
                    f"({len(items)}/{count} found, {attempts} drawn); the draws scored {lowest}..{highest}: "
                    f"use {option} <= {highest} (or raise --max-attempts)"
                )
        else:
            misses = 0
            items.append(item)
        if time.monotonic() - last_report >= PROGRESS_SECONDS:
            last_report = time.monotonic()
            print(
                f"{len(items)}/{count} {what}s with {option} >= {minimum} after {attempts} draws "
                f"({last_report - start:.0f} s; scores seen {lowest}..{highest})",
                file=sys.stderr,
                flush=True,
            )
    return items
