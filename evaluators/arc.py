"""ARC evaluation with the official protocol: invert each augmentation, vote across augmentations.

Every augmented version of a test input yields one prediction in the original frame; distinct
predictions are ranked by (vote count, mean halting probability) and pass@k asks whether the
solution is among the top k. A task scores the fraction of its test inputs solved.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Sequence

import numpy as np

from dataset.arc_grids import crop, grid_hash, grid_to_np, parse_augmentation
from dataset.errors import MissingFileError
from dataset.format import PuzzleDatasetMetadata
from dataset.storage import read_text


class ArcEvaluator:
    def __init__(
        self,
        data_path: str,
        eval_metadata: PuzzleDatasetMetadata,
        *,
        submission_K: int = 2,
        pass_Ks: Sequence[int] = (1, 2, 5, 10, 100, 1000),
        aggregated_voting: bool = True,
    ):
        self.blank_identifier_id = eval_metadata.blank_identifier_id
        self.submission_K = submission_K
        self.pass_Ks = tuple(pass_Ks)
        self.aggregated_voting = aggregated_voting
        root = data_path.rstrip("/")
        try:
            self.identifiers = json.loads(read_text(f"{root}/identifiers.json"))
            self.test_tasks = json.loads(read_text(f"{root}/test_puzzles.json"))
        except MissingFileError as e:
            raise MissingFileError(
                f"the arc evaluator needs an ARC dataset (built by dataset/build_arc_dataset.py): {e}. Point "
                "data_paths (or data_paths_test) at one, or drop `arc` from evaluators"
            ) from e
        self._grids: dict[str, np.ndarray] = {}  # prediction hash -> grid
        self._votes: dict[str, dict[str, list[tuple[str, float]]]] = {}  # task -> input hash -> [(pred hash, q)]

    def begin_eval(self) -> None:
        if not self.aggregated_voting:
            self._grids, self._votes = {}, {}

    def update_batch(self, batch: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        ids = np.asarray(batch["puzzle_identifiers"])
        real = ids != self.blank_identifier_id
        q_halt = 1 / (1 + np.exp(-np.asarray(outputs["q_halt_logits"], np.float64)))
        for identifier, inp, pred, q in zip(
            ids[real], np.asarray(batch["inputs"])[real], np.asarray(outputs["preds"])[real], q_halt[real], strict=False
        ):
            task, to_original = parse_augmentation(self.identifiers[identifier])
            input_hash = grid_hash(to_original(crop(inp)))
            grid = to_original(crop(pred))
            pred_hash = grid_hash(grid)
            self._grids[pred_hash] = grid
            self._votes.setdefault(task, {}).setdefault(input_hash, []).append((pred_hash, float(q)))

    def result(self, save_dir: str | None) -> dict[str, float] | None:
        gathered = _gather_to_process_0((self._grids, self._votes))
        if gathered is None:
            return None
        grids = {h: g for part_grids, _ in gathered for h, g in part_grids.items()}
        scores = np.zeros(len(self.pass_Ks))
        submission = {}
        for task, spec in self.test_tasks.items():
            votes = [part_votes.get(task, {}) for _, part_votes in gathered]
            task_scores, submission[task] = self._score_task(spec, votes, grids)
            scores += task_scores
        if save_dir is not None:
            os.makedirs(save_dir, exist_ok=True)
            with open(os.path.join(save_dir, "submission.json"), "w") as f:
                json.dump(submission, f)
        return {
            f"ARC/pass@{k}": float(s) / max(len(self.test_tasks), 1) for k, s in zip(self.pass_Ks, scores, strict=False)
        }

    def _score_task(self, spec: dict, votes: list[dict], grids: dict[str, np.ndarray]) -> tuple[np.ndarray, list]:
        correct = np.zeros(len(self.pass_Ks))
        attempts = []
        for pair in spec["test"]:
            ranked = _rank(h_q for part in votes for h_q in part.get(grid_hash(grid_to_np(pair["input"])), []))
            if not ranked:
                continue
            solution = grid_hash(grid_to_np(pair["output"]))
            correct += [solution in ranked[:k] for k in self.pass_Ks]
            top = ranked[: self.submission_K]
            top += top[:1] * (self.submission_K - len(top))
            attempts.append({f"attempt_{i + 1}": grids[h].tolist() for i, h in enumerate(top)})
        return correct / len(spec["test"]), attempts


def _rank(votes) -> list[str]:
    """Distinct prediction hashes, most votes first, ties broken by mean halting probability."""
    stats: dict[str, list[float]] = {}
    for pred_hash, q in votes:
        count_sum = stats.setdefault(pred_hash, [0, 0.0])
        count_sum[0] += 1
        count_sum[1] += q
    return sorted(stats, key=lambda h: (stats[h][0], stats[h][1] / stats[h][0]), reverse=True)


def _gather_to_process_0(local: object) -> list | None:
    """All processes' local state on process 0 (None elsewhere); a collective call."""
    import jax

    from training.distributed import allgather_bytes

    gathered = allgather_bytes(pickle.dumps(local))
    if jax.process_index() != 0:
        return None
    return [pickle.loads(blob) for blob in gathered]
