import json

import numpy as np
import pytest

from dataset.build_arc_dataset import main as build_arc
from dataset.puzzle_dataset import PuzzleDataset, eval_batches
from evaluators.arc import ArcEvaluator
from models.losses import IGNORE_LABEL_ID
from tests.arc_fixtures import write_tiny_arc


@pytest.fixture(scope="module")
def arc_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("arc_eval")
    write_tiny_arc(str(root / "arc"), (("training", 1), ("evaluation", 3)))
    build_arc(
        [
            "--input-file-prefix",
            str(root / "arc"),
            "--output-dir",
            str(root / "out"),
            "--subsets",
            "training",
            "evaluation",
            "--test-set-name",
            "evaluation",
            "--num-aug",
            "4",
        ]
    )
    return str(root / "out")


def _evaluate(data_path, make_preds, save_dir=None):
    dataset = PuzzleDataset([data_path], "test")
    evaluator = ArcEvaluator(data_path, dataset.metadata, pass_Ks=(1, 2, 5))
    evaluator.begin_eval()
    rng = np.random.default_rng(0)
    for _, batch in eval_batches(dataset, 8, process_index=0, process_count=1):
        outputs = {"preds": make_preds(batch, rng), "q_halt_logits": rng.normal(size=len(batch["inputs"]))}
        evaluator.update_batch(batch, outputs)
    return evaluator.result(save_dir)


def _oracle(batch, rng):
    return np.where(batch["labels"] == IGNORE_LABEL_ID, 0, batch["labels"])


def test_oracle_predictions_score_perfectly(arc_data, tmp_path):
    result = _evaluate(arc_data, _oracle, str(tmp_path))
    assert result == {"ARC/pass@1": 1.0, "ARC/pass@2": 1.0, "ARC/pass@5": 1.0}
    submission = json.loads((tmp_path / "submission.json").read_text())
    tasks = json.loads(open(f"{arc_data}/test_puzzles.json").read())
    for name, task in tasks.items():
        assert [a["attempt_1"] for a in submission[name]] == [p["output"] for p in task["test"]]


def test_random_predictions_score_near_zero(arc_data):
    result = _evaluate(arc_data, lambda batch, rng: rng.integers(0, 12, batch["inputs"].shape))
    assert result["ARC/pass@5"] == 0.0


def test_votes_rank_majority_first(arc_data):
    """Oracle on all but one augmented copy per batch, noise elsewhere: the majority answer still wins."""

    def mostly_oracle(batch, rng):
        preds = _oracle(batch, rng)
        preds[0] = rng.integers(2, 12, preds.shape[1])
        return preds

    assert _evaluate(arc_data, mostly_oracle)["ARC/pass@1"] == 1.0


# Only process 1 contributes predictions (its rows of every batch); process 0, which computes
# the result, can score anything only through the cross-process gather.
_MULTIPROCESS_WORKER = """
import json, os, sys
import jax
import numpy as np
jax.distributed.initialize(os.environ["TRM_COORDINATOR_ADDRESS"], int(os.environ["TRM_NUM_PROCESSES"]),
                           int(os.environ["TRM_PROCESS_ID"]), initialization_timeout=60)
from dataset.puzzle_dataset import PuzzleDataset, eval_batches
from models.losses import IGNORE_LABEL_ID
from evaluators.arc import ArcEvaluator
data_path = sys.argv[1]
dataset = PuzzleDataset([data_path], "test")
evaluator = ArcEvaluator(data_path, dataset.metadata, pass_Ks=(1, 2, 5))
evaluator.begin_eval()
for _, batch in eval_batches(dataset, 8, process_index=jax.process_index(), process_count=jax.process_count()):
    if jax.process_index() == 1:
        preds = np.where(batch["labels"] == IGNORE_LABEL_ID, 0, batch["labels"])
        evaluator.update_batch(batch, {"preds": preds, "q_halt_logits": np.zeros(len(preds))})
result = evaluator.result(None)
print("RESULT", jax.process_index(), json.dumps(result))
"""


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_processes_gather_every_prediction(arc_data, tmp_path, capfd):
    import importlib.util
    from pathlib import Path

    launcher = Path(__file__).resolve().parents[1] / "scripts" / "launch_local.py"
    spec = importlib.util.spec_from_file_location("launch_local", launcher)
    launch_local = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch_local)
    script = tmp_path / "worker.py"
    script.write_text(_MULTIPROCESS_WORKER)
    code = launch_local.launch(
        2, [arc_data], devices_per_process=1, timeout=150, log_dir=tmp_path / "logs", script=script
    )
    out = capfd.readouterr().out
    assert code == 0, out + (tmp_path / "logs" / "process_1.log").read_text()
    assert 'RESULT 0 {"ARC/pass@1": 1.0, "ARC/pass@2": 1.0, "ARC/pass@5": 1.0}' in out
    assert "RESULT 1 null" in (tmp_path / "logs" / "process_1.log").read_text()


def test_the_arc_evaluator_on_other_data_says_what_it_needs(data):
    from dataset.errors import DatasetError

    with pytest.raises(DatasetError) as e:
        ArcEvaluator(data, PuzzleDataset([data], "test").metadata)
    assert "the arc evaluator needs an ARC dataset (built by dataset/build_arc_dataset.py)" in str(e.value)
    assert "test_puzzles.json: file not found" in str(e.value) and "drop `arc` from evaluators" in str(e.value)
