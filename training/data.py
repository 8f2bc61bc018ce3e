"""Opening the training and evaluation data, generating offline datasets when configured."""

from __future__ import annotations

import logging
import os

from dataset.common import DatasetError, build_atomically
from dataset.puzzle_dataset import PuzzleDataset, check_same_format
from dataset.quickstart import ensure_quickstart_dataset
from dataset.smoke import build_smoke_dataset
from training.config import PretrainConfig

log = logging.getLogger(__name__)


def _generate_if_missing(cfg: PretrainConfig) -> None:
    path = cfg.data_paths[0]
    if cfg.data_generator == "quickstart":
        # The dataset is fixed (seed 0) whatever the training seed: seeds vary the model, not the data.
        ensure_quickstart_dataset(path)
    elif cfg.data_generator == "smoke":
        build_atomically(path, lambda staging: build_smoke_dataset(staging, cfg.smoke.num_puzzles, cfg.seed))


def open_datasets(cfg: PretrainConfig) -> tuple[PuzzleDataset, PuzzleDataset | None]:
    """(train, test); test is None when no test split exists (training without evaluation)."""
    _generate_if_missing(cfg)
    train = PuzzleDataset(cfg.data_paths, "train")
    test_paths = cfg.data_paths_test or cfg.data_paths
    if not all(p.startswith("gs://") or os.path.exists(os.path.join(p, "test")) for p in test_paths):
        log.warning("no test split under %s: training without evaluation", test_paths)
        return train, None
    test = PuzzleDataset(test_paths, "test")
    try:
        check_same_format(train.metadata, test.metadata, f"{cfg.data_paths} train", f"{test_paths} test")
    except DatasetError as e:
        raise DatasetError(f"train and test data disagree: {e}") from None
    return train, test
