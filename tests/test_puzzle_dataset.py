import json

import numpy as np
import pytest

from dataset.errors import DatasetError
from dataset.format import load_metadata, write_identifiers, write_split
from dataset.puzzle_dataset import PuzzleDataset, TrainSampler, eval_batches
from experiments.run_experiment import dataset_metadata
from models.losses import IGNORE_LABEL_ID

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


def test_loader_and_dry_run_merge_two_paths_alike(tmp_path):
    """The schedule's examples per epoch (total_groups * mean_puzzle_examples) must be the same
    in the dry-run and the real run, and mean_puzzle_examples the mean over all puzzles."""
    arrays = [_build(tmp_path / "a", seed=0, num_groups=3), _build(tmp_path / "b", seed=4, num_groups=9)]
    paths = [str(tmp_path / "a"), str(tmp_path / "b")]
    loaded = PuzzleDataset(paths, "train").metadata
    assert dataset_metadata(paths) == loaded
    examples = sum(len(a["inputs"]) for a in arrays)
    puzzles = sum(len(a["puzzle_identifiers"]) for a in arrays)
    assert loaded.mean_puzzle_examples == pytest.approx(examples / puzzles)
    assert loaded.total_groups == 12


def _corrupt(path, field, values):
    np.save(path / "train" / f"all__{field}.npy", np.asarray(values))


def _edit_json(path, **changes):
    file = path / "train" / "dataset.json"
    file.write_text(json.dumps(json.loads(file.read_text()) | changes))


def test_all_empty_puzzles_fail_at_open_naming_the_file(tmp_path):
    arrays = _build(tmp_path)
    _corrupt(tmp_path, "puzzle_indices", np.zeros_like(arrays["puzzle_indices"]))
    with pytest.raises(DatasetError, match=r"train/all__puzzle_indices.npy: must run from 0 to \d+ .the number of"):
        PuzzleDataset([str(tmp_path)], "train")


def test_empty_group_fails_at_open_naming_the_file(tmp_path):
    arrays = _build(tmp_path)
    groups = arrays["group_indices"].copy()
    groups[2] = groups[1]
    _corrupt(tmp_path, "group_indices", groups)
    with pytest.raises(DatasetError, match="train/all__group_indices.npy: group 1 has no puzzles"):
        PuzzleDataset([str(tmp_path)], "train")


def test_set_with_zero_examples_fails_at_open(tmp_path):
    _build(tmp_path)
    for field in ("inputs", "labels"):
        _corrupt(tmp_path, field, np.zeros((0, SEQ_LEN), np.uint8))
    _corrupt(tmp_path, "puzzle_identifiers", np.zeros(0, np.int32))
    _corrupt(tmp_path, "puzzle_indices", [0])
    _corrupt(tmp_path, "group_indices", [0])
    with pytest.raises(DatasetError, match="train/all__inputs.npy: the set has no examples"):
        PuzzleDataset([str(tmp_path)], "train")


def test_batch_larger_than_the_data_fails_when_the_sampler_is_created(data):
    path, arrays = data
    ds = PuzzleDataset([path], "train")
    n = len(arrays["inputs"])
    with pytest.raises(
        DatasetError, match=f"global_batch_size={n + 1} is larger than the {n} examples of split 'train'"
    ):
        TrainSampler(ds, n + 1, seed=0, process_index=0, process_count=1)
    TrainSampler(ds, n, seed=0, process_index=0, process_count=1, prefetch=0).next_batch()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"total_groups": 99}, "dataset.json: total_groups is 99 but the arrays hold 7"),
        (
            {"seq_len": SEQ_LEN + 1},
            rf"all__inputs.npy: shape \(\d+, {SEQ_LEN}\) is not \[examples, seq_len={SEQ_LEN + 1}\]",
        ),
        ({"vocab_size": 2}, "all__inputs.npy: token .* is outside the vocabulary .0, 2."),
        (
            {"num_puzzle_identifiers": 3},
            "all__puzzle_identifiers.npy: puzzle identifier .* outside the puzzle-embedding",
        ),
    ],
)
def test_dataset_json_is_checked_against_the_arrays(tmp_path, changes, message):
    _build(tmp_path)
    _edit_json(tmp_path, **changes)
    with pytest.raises(DatasetError, match=message) as err:
        PuzzleDataset([str(tmp_path)], "train")
    assert str(tmp_path / "train") in str(err.value)


def test_labels_that_disagree_with_inputs_name_the_file(tmp_path):
    arrays = _build(tmp_path)
    _corrupt(tmp_path, "labels", arrays["labels"][:-1])
    with pytest.raises(DatasetError, match=r"all__labels.npy: shape \(\d+, 4\) differs from the inputs'"):
        PuzzleDataset([str(tmp_path)], "train")


def test_check_ranges_against_smaller_model_tables(data):
    path, arrays = data
    ds = PuzzleDataset([path], "train")
    ds.check_ranges(vocab_size=256, num_puzzle_identifiers=ds.metadata.num_puzzle_identifiers)
    top_token = int(max(arrays["inputs"].max(), arrays["labels"].max()))
    with pytest.raises(DatasetError, match=f"token {top_token} is outside the vocabulary .0, {top_token}."):
        ds.check_ranges(vocab_size=top_token, num_puzzle_identifiers=ds.metadata.num_puzzle_identifiers)
    top_id = int(arrays["puzzle_identifiers"].max())
    with pytest.raises(DatasetError, match=f"puzzle identifier {top_id} is outside the puzzle-embedding table"):
        ds.check_ranges(vocab_size=256, num_puzzle_identifiers=top_id)


def test_resume_onto_different_data_is_a_clear_error(tmp_path):
    _build(tmp_path / "big", num_groups=9)
    _build(tmp_path / "small", num_groups=3)
    big = TrainSampler(PuzzleDataset([str(tmp_path / "big")], "train"), 4, seed=0, process_index=0, process_count=1)
    for _ in range(3):
        big.next_batch()
    state = big.get_state()
    big.close()
    small = PuzzleDataset([str(tmp_path / "small")], "train")
    sampler = TrainSampler(small, 4, seed=0, process_index=0, process_count=1)
    with pytest.raises(DatasetError, match="saved data position is for training data of 9 groups, but split 'train'"):
        sampler.set_state(state)
    position_only = {k: state[k] for k in ("epoch", "cursor", "batches")} | {"cursor": 5}  # older checkpoints
    with pytest.raises(DatasetError, match=r"position \(epoch 0, group 5\) does not fit split 'train' of .* 3 groups"):
        sampler.set_state(position_only)
