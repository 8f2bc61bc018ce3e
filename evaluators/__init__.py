"""Evaluator plugins: extra metrics computed on the host from every evaluation batch.

An evaluator is constructed as `cls(data_path, eval_metadata, **options)` from a config entry
`evaluators: [{name: arc, ...options}]` and implements:

    begin_eval() -> None
    update_batch(batch, outputs) -> None     # this process's rows (numpy) of one eval batch
    result(save_dir) -> dict[str, float] | None   # collective; process 0 returns the metrics
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class Evaluator(Protocol):
    def begin_eval(self) -> None: ...

    def update_batch(self, batch: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None: ...

    def result(self, save_dir: str | None) -> dict[str, float] | None: ...


def create_evaluator(name: str, data_path: str, eval_metadata: Any, **options: Any) -> Evaluator:
    if name == "arc":
        from evaluators.arc import ArcEvaluator

        return ArcEvaluator(data_path, eval_metadata, **options)
    raise ValueError(f"unknown evaluator {name!r}; available: ['arc']")
