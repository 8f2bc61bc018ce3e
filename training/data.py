"""Opening the training and evaluation data, generating offline datasets when configured."""

from __future__ import annotations

import logging
import os

from dataset.errors import DatasetError
from dataset.format import check_same_format
from dataset.manifest import build_atomically
from dataset.puzzle_dataset import PuzzleDataset, check_batch_fits
from dataset.quickstart import ensure_quickstart_dataset
from dataset.smoke import build_smoke_dataset
from training.config import PretrainConfig

log = logging.getLogger(__name__)


def _generate_if_missing(cfg: PretrainConfig) -> None:
    """Build the configured generator's dataset at data_paths[0] if it is not there. The
    quick-start generator fills only its own default path; any other missing path is an error."""
    path = cfg.data_paths[0]
    if cfg.data_generator == "quickstart":
        # The dataset is fixed (seed 0) whatever the training seed: seeds vary the model, not the data.
        ensure_quickstart_dataset(path)
    elif cfg.data_generator == "smoke":
        build_atomically(path, lambda staging: build_smoke_dataset(staging, cfg.smoke.num_puzzles, cfg.seed))


def open_datasets(cfg: PretrainConfig) -> tuple[PuzzleDataset, PuzzleDataset | None]:
    """(train, test), each checked against its dataset.json and the model's tables; test is None
    when `data_paths_test` is empty and `data_paths` have no test split (training without
    evaluation). An explicit `data_paths_test` that is missing is an error."""
    _generate_if_missing(cfg)
    train = PuzzleDataset(cfg.data_paths, "train")
    check_batch_fits(train, cfg.global_batch_size)
    if not cfg.data_paths_test and not all(
        p.startswith("gs://") or os.path.exists(os.path.join(p, "test")) for p in cfg.data_paths
    ):
        log.warning("no test split under %s: training without evaluation", cfg.data_paths)
        return train, None
    test_paths = cfg.data_paths_test or cfg.data_paths
    test = PuzzleDataset(test_paths, "test")
    try:
        check_same_format(train.metadata, test.metadata, f"{cfg.data_paths} train", f"{test_paths} test")
    except DatasetError as e:
        raise DatasetError(f"train and test data disagree: {e}") from None
    # The model's tables are sized by the training data; the test data indexes the same tables.
    test.check_ranges(
        vocab_size=train.metadata.vocab_size, num_puzzle_identifiers=train.metadata.num_puzzle_identifiers
    )
    return train, test
