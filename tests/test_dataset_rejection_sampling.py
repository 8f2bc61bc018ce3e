import itertools

import pytest

from dataset import rejection_sampling
from dataset.errors import DatasetError
from dataset.rejection_sampling import sample_at_least


def _draws(scores, minimum):
    it = iter(scores)

    def attempt():
        score = next(it)
        return score, (score if score >= minimum else None)

    return attempt


def test_rare_successes_reset_the_bound():
    scores = itertools.cycle([1, 2, 3, 9])  # 3 misses between successes
    found = sample_at_least(_draws(scores, 9), 5, minimum=9, max_attempts=4, what="thing", option="--min")
    assert found == [9] * 5


def test_unreachable_minimum_fails_with_the_range_seen():
    scores = itertools.chain([5, 12], itertools.cycle([3, 7]))
    with pytest.raises(DatasetError) as err:
        sample_at_least(_draws(scores, 10), 2, minimum=10, max_attempts=6, what="thing", option="--min")
    assert str(err.value) == (
        "no thing reached --min 10 in 6 draws in a row (1/2 found, 8 drawn); the draws scored 3..12: "
        "use --min <= 12 (or raise --max-attempts)"
    )


def test_progress_is_reported(monkeypatch, capsys):
    monkeypatch.setattr(rejection_sampling, "PROGRESS_SECONDS", 0.0)
    sample_at_least(_draws(itertools.cycle([1, 5]), 5), 2, minimum=5, max_attempts=3, what="thing", option="--min")
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("2/2 things with --min >= 5 after 4 draws") and "scores seen 1..5" in err[-1]
