"""Saved evaluation outputs (`eval_save_outputs`): this process's rows of one evaluation as
`<save_dir>/outputs_process<i>.npz`, and on process 0 a picture of the first puzzles,
`<save_dir>/predictions.png` (input, prediction, target; evaluators/render.py).

Every process writes only the rows it evaluated, in its evaluation order (no gather on one host);
padding rows of the last batch are left out. Token arrays are stored in the smallest integer type
that holds the vocabulary (labels keep -100 for ignored positions).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence

import jax
import numpy as np

from dataset.format import PuzzleDatasetMetadata
from evaluators.render import infer_kind, render_sheet

log = logging.getLogger(__name__)

SHEET_ROWS = 8  # puzzles in predictions.png: the first ones of process 0, the same at every evaluation
_SHEET_KEYS = ("inputs", "labels", "preds", "q_halt_logits", "halt_step")


class OutputRecorder:
    """Collects the named arrays of every batch of one evaluation and writes them at the end."""

    def __init__(self, names: Sequence[str], *, save_dir: str, metadata: PuzzleDatasetMetadata):
        self.names = tuple(dict.fromkeys(names))
        self.save_dir = save_dir
        self.pad_id = metadata.pad_id
        self.seq_len, self.vocab_size = metadata.seq_len, metadata.vocab_size
        token = np.min_scalar_type(metadata.vocab_size - 1)
        self.dtypes = {"inputs": token, "preds": token, "labels": np.promote_types(token, np.int8)}
        self.parts: dict[str, list[np.ndarray]] = {k: [] for k in self.names}
        self.sheet: dict[str, list[np.ndarray]] = {k: [] for k in _SHEET_KEYS}

    def add(self, batch: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        """This process's rows of one batch (numpy) and the eval step's outputs for them."""
        rows = {**batch, **outputs}
        # Padding rows (the end of a set's last batch) hold nothing but the pad token.
        real = np.any(np.asarray(batch["inputs"]) != self.pad_id, axis=1)
        for k in self.names:
            self.parts[k].append(np.asarray(rows[k])[real].astype(self.dtypes.get(k, np.asarray(rows[k]).dtype)))
        missing = SHEET_ROWS - sum(map(len, self.sheet["inputs"]))
        if missing > 0 and jax.process_index() == 0:
            for k in _SHEET_KEYS:
                self.sheet[k].append(np.asarray(rows[k])[real][:missing])

    def write(self) -> None:
        os.makedirs(self.save_dir, exist_ok=True)
        arrays = {k: np.concatenate(v) for k, v in self.parts.items()}
        path = os.path.join(self.save_dir, f"outputs_process{jax.process_index()}.npz")
        fd, tmp = tempfile.mkstemp(dir=self.save_dir, prefix=".outputs-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        if jax.process_index() == 0 and self.sheet["inputs"]:
            self._draw(os.path.join(self.save_dir, "predictions.png"))

    def _draw(self, out: str) -> None:
        try:
            kind = infer_kind(seq_len=self.seq_len, vocab_size=self.vocab_size)
        except ValueError as e:
            log.warning("no predictions.png: %s", e)
            return
        sheet = {k: np.concatenate(v) for k, v in self.sheet.items()}
        confidence = 1 / (1 + np.exp(-sheet["q_halt_logits"].astype(np.float64)))
        captions = [f"halt step {h}, confidence {c:.2f}" for h, c in zip(sheet["halt_step"], confidence, strict=True)]
        render_sheet(
            out,
            kind=kind,
            inputs=sheet["inputs"],
            preds=sheet["preds"],
            labels=sheet["labels"],
            captions=captions,
            max_puzzles=SHEET_ROWS,
        )
