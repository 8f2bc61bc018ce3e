"""One evaluation pass over the test set: the jitted eval step per batch, metric sums reduced once
on the host at the end, and the evaluator plugins fed this process's rows.

Metric names say what was evaluated: `eval/<set>/...` the full test set, `eval_subset/<set>/...`
the fixed `eval_subset` examples; the primary weights (EMA when `ema`) as they are, the raw weights
and each extra EMA shadow of `ema_rates` with a suffix (`eval_raw/...`, `eval_ema0.99/...`,
`eval_subset_ema0.99/...`). Evaluators (e.g. ARC voting) see the primary weights on the full set;
`eval_save_outputs` saves the primary weights' outputs of whatever was evaluated (training/eval_outputs.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from dataset.puzzle_dataset import PuzzleDataset, eval_batches, eval_subset
from evaluators import Evaluator
from training.eval_outputs import OutputRecorder
from training.metrics_log import reduce_eval
from training.sharding import Shardings, global_batch, local_rows
from training.state import TrainState


def subset_examples(test_ds: PuzzleDataset, size: int | None, *, seed: int) -> np.ndarray | None:
    """The examples of the intermediate evaluations: `size` fixed by the seed and the test set, or
    None (the full set) without `eval_subset` or when it covers the whole test set."""
    if size is None or size >= test_ds.num_examples:
        return None
    return eval_subset(test_ds, size, seed=seed)


def eval_weightings(state: TrainState, *, use_ema: bool, ema_rates: Sequence[float]) -> dict[str, dict[str, Any]]:
    """Metric-name suffix -> weights to evaluate: the primary ones, and with `ema_rates` also the
    raw weights (unless they are the primary ones) and every extra shadow."""
    out = {"": state.eval_variables(use_ema)}
    if ema_rates and use_ema:
        out["_raw"] = state.eval_variables(False)
    for label, shadow in state.ema_shadows.items():
        out[f"_ema{label}"] = {"params": shadow, "buffers": state.buffers}
    return out


def evaluate_all(
    eval_step: Callable,
    *,
    weightings: dict[str, dict[str, Any]],
    examples: np.ndarray | None,
    evaluators: Sequence[Evaluator],
    save_outputs: Sequence[str] = (),
    **common: Any,
) -> dict[str, Any]:
    """`evaluate` for every weighting, on `examples` (a subset) or, when None, the full test set."""
    base = "eval" if examples is None else "eval_subset"
    results: dict[str, Any] = {}
    for suffix, variables in weightings.items():
        primary_full = suffix == "" and examples is None
        results.update(
            evaluate(
                eval_step,
                variables=variables,
                prefix=base + suffix,
                examples=examples,
                evaluators=evaluators if primary_full else (),
                save_outputs=save_outputs if suffix == "" else (),
                **common,
            )
        )
    return results


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
    prefix: str = "eval",
    examples: np.ndarray | None = None,
    save_outputs: Sequence[str] = (),
) -> dict[str, Any]:
    """Metrics of `variables` on every set of `test_ds` (`<prefix>/<set>/...`), or on the sorted
    example ids `examples` only, plus the evaluators'; the `save_outputs` arrays go to `save_dir`."""
    for ev in evaluators:
        ev.begin_eval()
    recorder = OutputRecorder(save_outputs, save_dir=save_dir, metadata=test_ds.metadata) if save_outputs else None
    sums: dict[str, Any] = {}
    batches = eval_batches(
        test_ds, batch_size, process_index=jax.process_index(), process_count=jax.process_count(), examples=examples
    )
    for set_name, local in batches:
        metrics, outputs = eval_step(variables, puzzle_emb, global_batch(local, sh))
        prev = sums.get(set_name)
        sums[set_name] = metrics if prev is None else jax.tree.map(lambda a, b: a + b, prev, metrics)
        if evaluators or recorder:
            host_out = {k: local_rows(v) for k, v in outputs.items()}
            for ev in evaluators:
                ev.update_batch(local, host_out)
            if recorder:
                recorder.add(local, host_out)
    if recorder:
        recorder.write()
    results: dict[str, Any] = {}
    for set_name, s in jax.device_get(sums).items():
        results.update({prefix + k.removeprefix("eval"): v for k, v in reduce_eval(s, set_name).items()})
    for ev in evaluators:
        extra = ev.result(save_dir)
        results.update({f"{prefix}/{k}": v for k, v in (extra or {}).items()})
    return results
