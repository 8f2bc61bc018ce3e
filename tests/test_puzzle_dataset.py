import numpy as np
import pytest

from dataset.common import DatasetError, write_identifiers, write_split
from dataset.puzzle_dataset import IGNORE_LABEL_ID, PuzzleDataset, TrainSampler, eval_batches, load_metadata

SEQ_LEN = 4


def _build(path, seed=0, num_groups=7, split_names=("train", "test"), seq_len=SEQ_LEN):
    """Groups of 1-3 puzzles with 1-4 examples; tokens 0/1 encode the global example id."""
    rng = np.random.default_rng(seed)
    puzzles_per_group = rng.integers(1, 4, num_groups)
    examples_per_puzzle = rng.integers(1, 5, puzzles_per_group.sum())
    n = examples_per_puzzle.sum()
    ids = np.arange(n)
    inputs = np.stack([ids % 200 + 1, ids // 200 + 1] + [np.full(n, 2)] * (seq_len - 2), axis=1)
    labels = inputs.copy()
    labels[:, -1] = 0  # ignore_label_id -> IGNORE_LABEL_ID at load time
    arrays = {
        "inputs": inputs,
        "labels": labels,
        "puzzle_identifiers": np.arange(1, len(examples_per_puzzle) + 1),
        "puzzle_indices": np.concatenate([[0], np.cumsum(examples_per_puzzle)]),
        "group_indices": np.concatenate([[0], np.cumsum(puzzles_per_group)]),
    }
    for split in split_names:
        write_split(
            str(path),
            split,
            {"all": arrays},
            pad_id=0,
            ignore_label_id=0,
            vocab_size=256,
            num_puzzle_identifiers=len(examples_per_puzzle) + 1,
        )
    write_identifiers(str(path), ["<blank>"] + [f"p{i}" for i in range(len(examples_per_puzzle))])
    return arrays


def _example_ids(batch):
    return (batch["inputs"][:, 0] - 1) + 200 * (batch["inputs"][:, 1] - 1)


def _batches(sampler, count):
    return [sampler.next_batch() for _ in range(count)]


@pytest.fixture()
def data(tmp_path):
    arrays = _build(tmp_path)
    return str(tmp_path), arrays


def test_batches_follow_group_puzzle_example_sampling(data):
    path, arrays = data
    ds = PuzzleDataset([path], "train")
    sampler = TrainSampler(ds, 8, seed=3, process_index=0, process_count=1, prefetch=0)
    puzzle_of = np.searchsorted(arrays["puzzle_indices"], np.arange(len(arrays["inputs"])), side="right") - 1
    group_of = np.searchsorted(arrays["group_indices"], puzzle_of, side="right") - 1
    epoch0 = []  # rows of batches that end inside epoch 0, so hold epoch-0 rows only
    while sampler.get_state()["epoch"] == 0:
        rows = _example_ids(sampler.next_batch())
        if sampler.get_state()["epoch"] == 0:
            epoch0.append(rows)
    epoch0 = np.concatenate(epoch0)
    groups = group_of[epoch0]
    for g in set(groups):  # one puzzle per group per epoch, examples without replacement
        examples = epoch0[groups == g]
        assert len(set(puzzle_of[examples])) == 1 and len(set(examples)) == len(examples)
    seen_groups = set(groups) | set(group_of[rows])
    assert seen_groups == set(range(len(arrays["group_indices"]) - 1))
    batch = sampler.next_batch()
    assert batch["inputs"].dtype == np.int32 and batch["inputs"].shape == (8, SEQ_LEN)
    assert np.all(batch["labels"][:, -1] == IGNORE_LABEL_ID)
    assert np.array_equal(batch["puzzle_identifiers"], arrays["puzzle_identifiers"][puzzle_of[_example_ids(batch)]])


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_shards_union_is_the_global_batch(data, process_count):
    path, _ = data
    ds = PuzzleDataset([path], "train")
    full = _batches(TrainSampler(ds, 8, seed=1, process_index=0, process_count=1), 12)
    shards = [
        _batches(TrainSampler(ds, 8, seed=1, process_index=p, process_count=process_count), 12)
        for p in range(process_count)
    ]
    for step, batch in enumerate(full):
        for key in batch:
            assert np.array_equal(np.concatenate([s[step][key] for s in shards]), batch[key])


def test_resume_from_state_reproduces_batches(data):
    path, _ = data
    ds = PuzzleDataset([path], "train")
    sampler = TrainSampler(ds, 8, seed=5, process_index=0, process_count=1, prefetch=2)
    _batches(sampler, 5)
    state = sampler.get_state()
    expected = _batches(sampler, 6)
    resumed = TrainSampler(ds, 8, seed=5, process_index=0, process_count=1, prefetch=3)
    resumed.set_state(state)
    for a, b in zip(expected, _batches(resumed, 6), strict=False):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    assert resumed.get_state() == sampler.get_state()
    assert resumed.epochs_done == pytest.approx(11 * 8 / (ds.metadata.total_groups * ds.metadata.mean_puzzle_examples))
    different_seed = TrainSampler(ds, 8, seed=6, process_index=0, process_count=1)
    assert not np.array_equal(different_seed.next_batch()["inputs"], expected[0]["inputs"])


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_eval_batches_visit_each_example_once(data, process_count):
    path, arrays = data
    ds = PuzzleDataset([path], "test")
    seen = []
    for p in range(process_count):
        for set_name, batch in eval_batches(ds, 8, process_index=p, process_count=process_count):
            assert set_name == "all" and len(batch["inputs"]) == 8 // process_count
            real = batch["puzzle_identifiers"] != 0
            assert np.all(batch["labels"][~real] == IGNORE_LABEL_ID) and np.all(batch["inputs"][~real] == 0)
            seen.extend(_example_ids(batch)[real])
    assert sorted(seen) == list(range(len(arrays["inputs"])))


def test_two_paths_offset_identifiers_and_merge_counts(tmp_path):
    _build(tmp_path / "a", seed=0)
    _build(tmp_path / "b", seed=1)
    a, b = (PuzzleDataset([str(tmp_path / x)], "train") for x in "ab")
    both = PuzzleDataset([str(tmp_path / "a"), str(tmp_path / "b")], "train")
    assert both.metadata.num_puzzle_identifiers == a.metadata.num_puzzle_identifiers + b.metadata.num_puzzle_identifiers
    assert both.metadata.total_groups == a.metadata.total_groups + b.metadata.total_groups
    assert [name for name, _, _ in both.sets] == ["all", "all1"]
    offset_ids = both.puzzle_identifiers[len(a.puzzle_identifiers) :]
    assert np.array_equal(offset_ids, b.puzzle_identifiers + a.metadata.num_puzzle_identifiers)
    sampler = TrainSampler(both, 16, seed=0, process_index=0, process_count=1)
    assert all(b_["puzzle_identifiers"].max() < both.metadata.num_puzzle_identifiers for b_ in _batches(sampler, 5))


def test_metadata_mismatch_names_the_key(tmp_path):
    _build(tmp_path / "a")
    _build(tmp_path / "b", seq_len=5)
    with pytest.raises(DatasetError, match="seq_len"):
        PuzzleDataset([str(tmp_path / "a"), str(tmp_path / "b")], "train")


def test_missing_split_is_a_clear_error(tmp_path):
    _build(tmp_path, split_names=("train",))
    with pytest.raises(DatasetError, match="split 'test' missing"):
        load_metadata(str(tmp_path), "test")


def test_reads_gs_path_through_emulator(tmp_path, gcs_emulator):
    import gcsfs

    arrays = _build(tmp_path / "local")
    fs = gcsfs.GCSFileSystem(token="anon")
    remote = f"{gcs_emulator['bucket']}/loader-test"
    fs.put(str(tmp_path / "local"), remote, recursive=True)
    ds = PuzzleDataset([f"gs://{remote}"], "test", cache_dir=str(tmp_path / "cache"))
    seen = np.concatenate(
        [
            _example_ids(b)[b["puzzle_identifiers"] != 0]
            for _, b in eval_batches(ds, 8, process_index=0, process_count=1)
        ]
    )
    assert np.array_equal(seen, np.arange(len(arrays["inputs"])))
