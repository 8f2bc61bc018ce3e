"""experiments/dedup.py: which experiments are one training, derived from their configs."""

from __future__ import annotations

import copy

import pytest

from experiments.dedup import EMA_KEYS, NON_TRAINING_KEYS, evaluated_weightings, group_trainings, training_key
from experiments.table import STUDY
from training.config import apply_smoke, compose, validate

# The count of the same training in the current table.
BASELINE_COPIES = [
    "baseline",
    "exp01c",
    "exp02a_03",
    "exp02b_03",
    "exp03b",
    "exp04a_1000",
    "exp04b_1000",
    "exp05_d",
    "exp06_c",
    "exp07b",
    "exp08d",
    "exp09a",
    "exp10b",
    "contrib01_baseline",
    "contrib02_baseline",
]
EMA_VARIANTS = ["exp08a", "exp08b", "exp08c", "exp08e"]


@pytest.fixture(scope="module")
def study() -> dict[str, dict]:
    return {e.name: validate(compose(e.name)).model_dump() for e in STUDY}


def canonicals(trainings) -> list[str]:
    return list(dict.fromkeys(t.canonical for t in trainings.values()))


def test_the_study_holds_54_trainings_and_50_with_ema_shadows(study):
    single = group_trainings(study, multi_ema=False)
    assert len(canonicals(single)) == 54
    assert list(single["baseline"].members) == BASELINE_COPIES
    multi = group_trainings(study, multi_ema=True)
    assert len(canonicals(multi)) == 50
    assert list(multi["baseline"].members) == [n for n in study if n in BASELINE_COPIES + EMA_VARIANTS]
    assert set(multi["baseline"].weightings) == {"raw", "ema 0.99", "ema 0.995", "ema 0.999", "ema 0.9995"}
    assert multi["baseline"].ema_rates() == [0.999, 0.99, 0.995, 0.9995]


def _leaves(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    if isinstance(value, list):
        return [*value, "another"]
    return f"{value}-edited"


def _set(d: dict, dotted: str, value) -> dict:
    d = copy.deepcopy(d)
    *parents, leaf = dotted.split(".")
    node = d
    for key in parents:
        node = node[key]
    node[leaf] = value
    return d


def test_editing_any_training_setting_of_a_row_makes_it_a_distinct_training(study):
    keys = [k for k, _ in _leaves(study["exp07b"]) if k.split(".")[0] not in NON_TRAINING_KEYS + EMA_KEYS]
    assert len(keys) > 40
    for key, value in _leaves(study["exp07b"]):
        edited = {**study, "exp07b": _set(study["exp07b"], key, _changed(value))}
        alias_of = group_trainings(edited)["exp07b"].canonical
        if key in keys:
            assert alias_of == "exp07b", f"changing {key} must make exp07b its own training"
        elif key.split(".")[0] in NON_TRAINING_KEYS:
            assert alias_of == "baseline", f"{key} names or places a run; it does not change its training"


def test_ema_rate_aliases_only_when_the_training_keeps_several_shadows(study):
    subset = {n: study[n] for n in ("baseline", "exp08b")}
    assert group_trainings(subset, multi_ema=False)["exp08b"].canonical == "exp08b"
    assert group_trainings(subset, multi_ema=True)["exp08b"].canonical == "baseline"
    assert evaluated_weightings({"ema": True, "ema_rate": 0.999}) == {"ema 0.999"}
    assert evaluated_weightings({"ema": True, "ema_rate": 0.999, "ema_rates": [0.99]}) == {
        "raw",
        "ema 0.99",
        "ema 0.999",
    }


def test_replicas_are_numbered_and_shadows_still_shared(study):
    trainings = group_trainings(study, multi_ema=True, replicate=True)
    replicas = [trainings[n].replica for n in BASELINE_COPIES]
    assert replicas == list(range(len(BASELINE_COPIES)))
    assert {trainings[n].canonical for n in EMA_VARIANTS} == {"baseline"}


def test_smoke_data_location_is_not_part_of_the_training():
    a, b = (
        validate(apply_smoke(compose(n, ["smoke.enabled=true", f"run_dir=/tmp/{n}"]))).model_dump()
        for n in ("baseline", "exp07b")
    )
    assert a["data_paths"] != b["data_paths"] and training_key(a) == training_key(b)
    real = {**a, "data_generator": None}
    assert training_key(real) != training_key({**real, "data_paths": b["data_paths"]})
