"""training/data.py: opening the train and test data for a run, with every start-up check."""

import json
import logging
import shutil

import numpy as np
import pytest

from dataset.errors import DatasetError
from dataset.smoke import build_smoke_dataset
from training.config import compose, validate
from training.data import open_datasets


def _cfg(*overrides):
    return validate(compose("quickstart", ["global_batch_size=16", *overrides]))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_smoke_dataset(str(tmp_path_factory.mktemp("tiny") / "ds"), 32, seed=0)


def test_opens_train_and_test(tiny):
    train, test = open_datasets(_cfg(f"data_paths=[{tiny}]"))
    assert (train.num_examples, test.num_examples) == (32, 16)


def test_typo_in_data_paths_is_an_error_not_a_new_dataset(tmp_path):
    typo = tmp_path / "data" / "quickstart-sudoku44"
    with pytest.raises(DatasetError, match=f"{typo}: no such dataset directory; .* check data_paths for a typo"):
        open_datasets(_cfg(f"data_paths=[{typo}]"))
    assert not (tmp_path / "data").exists()


def test_explicit_missing_test_data_is_an_error(tiny, tmp_path):
    with pytest.raises(DatasetError, match=f"split 'test' missing: {tmp_path / 'nope'}/test/dataset.json not found"):
        open_datasets(_cfg(f"data_paths=[{tiny}]", f"data_paths_test=[{tmp_path / 'nope'}]"))


def test_no_test_split_under_data_paths_trains_without_evaluation(tiny, tmp_path, caplog):
    shutil.copytree(f"{tiny}/train", tmp_path / "only_train" / "train")
    with caplog.at_level(logging.WARNING):
        train, test = open_datasets(_cfg(f"data_paths=[{tmp_path / 'only_train'}]"))
    assert test is None and train.num_examples == 32
    assert "training without evaluation" in caplog.text


def test_batch_larger_than_the_training_data_fails_before_training(tiny):
    with pytest.raises(
        DatasetError, match=f"global_batch_size=64 is larger than the 32 examples of split 'train' of {tiny}"
    ):
        open_datasets(_cfg(f"data_paths=[{tiny}]", "global_batch_size=64"))


def test_test_data_must_fit_the_models_puzzle_table(tiny, tmp_path):
    other = tmp_path / "other" / "test"
    shutil.copytree(f"{tiny}/test", other)
    meta = json.loads((other / "dataset.json").read_text())
    (other / "dataset.json").write_text(json.dumps(meta | {"num_puzzle_identifiers": 5}))
    np.save(other / "all__puzzle_identifiers.npy", np.full(meta["total_puzzles"], 4, np.int32))
    # The model's puzzle table has the training data's single row; identifier 4 would index past it.
    with pytest.raises(DatasetError, match="all__puzzle_identifiers.npy: puzzle identifier 4 is outside .* .0, 1."):
        open_datasets(_cfg(f"data_paths=[{tiny}]", f"data_paths_test=[{tmp_path / 'other'}]"))
