"""training/evaluation.py with `eval_save_outputs`: every evaluated row saved per process, padding
left out, plus a picture of the first puzzles; the knob's names are validated."""

from __future__ import annotations

import logging

import jax
import matplotlib.image
import numpy as np
import pytest

from dataset.format import PuzzleDatasetMetadata
from evaluators.render import sheet_size
from models.losses import IGNORE_LABEL_ID
from pretrain_jax import train
from tests.pretrain_runs import assert_ok, launcher_cmd, run, run_env, train_args
from training.config import ConfigError, compose, validate
from training.eval_outputs import SHEET_ROWS, OutputRecorder

ALL = ["inputs", "labels", "puzzle_identifiers", "preds", "q_halt_logits", "halt_step"]
TINY = ["arch.hidden_size=32", "arch.num_heads=2", "arch.L_layers=1", "arch.H_cycles=1", "arch.L_cycles=1"]


def test_an_evaluation_saves_every_row_and_draws_the_first_puzzles(tmp_path, data):
    run = tmp_path / "run"
    # 256 test puzzles in batches of 24: the last batch is padded with 8 rows that must not be saved.
    overrides = [*TINY, "global_batch_size=24", "max_steps=2", f"eval_save_outputs=[{','.join(ALL)}]"]
    cfg = validate(compose("quickstart", [f"data_paths=[{data}]", f"run_dir={run}", *overrides]))
    result = train(cfg)
    assert result.status == "completed", result.error

    saved = np.load(run / "eval_step_2" / "outputs_process0.npz")
    inputs, labels = (np.load(f"{data}/test/all__{k}.npy") for k in ("inputs", "labels"))
    assert sorted(saved) == sorted(ALL)
    assert all(len(saved[k]) == len(inputs) == 256 for k in ALL)
    np.testing.assert_array_equal(saved["inputs"], inputs)
    np.testing.assert_array_equal(saved["labels"], np.where(labels == 0, IGNORE_LABEL_ID, labels))
    assert saved["preds"].shape == inputs.shape and saved["preds"].max() < 6
    assert saved["q_halt_logits"].dtype == np.float32
    assert set(np.unique(saved["halt_step"])) <= set(range(1, cfg.arch.halt_max_steps + 1))
    assert (saved["puzzle_identifiers"] == 0).all()  # Sudoku puzzles share the blank identifier

    png = run / "eval_step_2" / "predictions.png"
    height, width = matplotlib.image.imread(png).shape[:2]
    assert (width, height) == sheet_size(SHEET_ROWS)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_every_process_saves_its_own_rows(tmp_path, data, compile_cache):
    run_dir = tmp_path / "run"
    args = train_args(data, run_dir, "max_steps=2", "eval_save_outputs=[inputs,halt_step]")
    assert_ok(
        run(launcher_cmd(2, 1, args, tmp_path / "logs", timeout=200), run_env(compile_cache), tmp_path / "log", 220)
    )
    parts = [np.load(run_dir / "eval_step_2" / f"outputs_process{i}.npz") for i in range(2)]
    # Global batches of 16 rows: process i evaluated rows 8i..8i+7 of each, and saved only those.
    inputs = np.load(f"{data}/test/all__inputs.npy")
    for i, part in enumerate(parts):
        assert len(part["inputs"]) == len(part["halt_step"]) == len(inputs) // 2
        np.testing.assert_array_equal(
            part["inputs"], inputs.reshape(-1, 2, 8, inputs.shape[1])[:, i].reshape(part["inputs"].shape)
        )
    assert (run_dir / "eval_step_2" / "predictions.png").stat().st_size > 0


@pytest.mark.parametrize("value", ["[logits]", "[preds,carry]", "preds"])
def test_unknown_output_names_are_refused(value):
    assert validate(compose("quickstart")).eval_save_outputs == []  # nothing is saved by default
    with pytest.raises(ConfigError, match="eval_save_outputs"):
        validate(compose("quickstart", [f"eval_save_outputs={value}"]))


def _metadata(seq_len: int, vocab_size: int) -> PuzzleDatasetMetadata:
    return PuzzleDatasetMetadata(
        pad_id=0,
        ignore_label_id=0,
        blank_identifier_id=0,
        vocab_size=vocab_size,
        seq_len=seq_len,
        num_puzzle_identifiers=1,
        total_groups=1,
        mean_puzzle_examples=1.0,
        total_puzzles=1,
        sets=["all"],
    )


def test_padding_rows_are_dropped_and_an_unknown_kind_gets_no_picture(tmp_path, caplog):
    recorder = OutputRecorder(["inputs", "preds", "halt_step"], save_dir=str(tmp_path / "e"), metadata=_metadata(10, 7))
    rng = np.random.default_rng(0)
    for real in (4, 1):  # a full batch, then one row and three of padding
        inputs = np.zeros((4, 10), np.int32)
        inputs[:real] = rng.integers(1, 7, (real, 10))
        outputs = {
            "preds": rng.integers(0, 7, (4, 10)),
            "q_halt_logits": np.zeros(4, np.float32),
            "halt_step": np.arange(1, 5),
        }
        recorder.add({"inputs": inputs, "labels": np.full((4, 10), IGNORE_LABEL_ID)}, outputs)
    with caplog.at_level(logging.WARNING):
        recorder.write()
    saved = np.load(tmp_path / "e" / f"outputs_process{jax.process_index()}.npz")
    assert sorted(saved) == ["halt_step", "inputs", "preds"]
    assert saved["inputs"].shape == (5, 10) and saved["inputs"].dtype == np.uint8
    np.testing.assert_array_equal(saved["halt_step"], [1, 2, 3, 4, 1])
    assert not (tmp_path / "e" / "predictions.png").exists() and "no predictions.png" in caplog.text
