"""One evaluation pass over the test set: the jitted eval step per batch, metric sums reduced once
on the host at the end, and the evaluator plugins fed this process's rows."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax

from dataset.puzzle_dataset import PuzzleDataset, eval_batches
from evaluators import Evaluator
from training.metrics_log import reduce_eval
from training.sharding import Shardings, global_batch, local_rows


def evaluate(
    eval_step: Callable,
    *,
    variables: dict[str, Any],
    puzzle_emb: jax.Array,
    test_ds: PuzzleDataset,
    batch_size: int,
    sh: Shardings,
    evaluators: Sequence[Evaluator],
    save_dir: str,
) -> dict[str, Any]:
    """Metrics of `variables` on every set of `test_ds` (`eval/<set>/...`) plus the evaluators'."""
    for ev in evaluators:
        ev.begin_eval()
    sums: dict[str, Any] = {}
    batches = eval_batches(
        test_ds, batch_size, process_index=jax.process_index(), process_count=jax.process_count()
    )
    for set_name, local in batches:
        metrics, outputs = eval_step(variables, puzzle_emb, global_batch(local, sh))
        prev = sums.get(set_name)
        sums[set_name] = metrics if prev is None else jax.tree.map(lambda a, b: a + b, prev, metrics)
        if evaluators:
            host_out = {k: local_rows(v) for k, v in outputs.items()}
            for ev in evaluators:
                ev.update_batch(local, host_out)
    results: dict[str, Any] = {}
    for set_name, s in jax.device_get(sums).items():
        results.update(reduce_eval(s, set_name))
    for ev in evaluators:
        extra = ev.result(save_dir)
        results.update({f"eval/{k}": v for k, v in (extra or {}).items()})
    return results
