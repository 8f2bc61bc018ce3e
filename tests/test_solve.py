"""solve.py: puzzles from the command line or files through a tiny model trained here, validity
and correctness reporting, batching through the evaluation step, pictures, and every bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import fsspec
import matplotlib.image
import numpy as np
import pytest

import solve
from dataset.build_arc_dataset import main as build_arc
from dataset.build_maze_dataset import build as build_maze
from dataset.build_maze_dataset import generate as generate_mazes
from evaluators.render import sheet_size
from pretrain_jax import train
from tests.arc_fixtures import write_tiny_arc
from training.config import compose, validate

TINY = [
    "arch.hidden_size=32",
    "arch.num_heads=2",
    "arch.L_layers=1",
    "arch.H_cycles=1",
    "arch.L_cycles=1",
    "arch.halt_max_steps=2",
    "global_batch_size=8",
    "log_every_steps=1",
]


def _train(run_dir: Path, data: str, *overrides: str) -> Path:
    cfg = validate(compose("quickstart", [f"data_paths=[{data}]", f"run_dir={run_dir}", *TINY, *overrides]))
    result = train(cfg)
    assert result.status == "completed", result.error
    return run_dir


@pytest.fixture(scope="module")
def sudoku_run(tmp_path_factory, data) -> Path:
    """Two steps on 4x4 Sudoku with EMA, a checkpoint after each; the final evaluation's outputs saved."""
    saved = "eval_save_outputs=[preds,q_halt_logits,halt_step]"
    return _train(
        tmp_path_factory.mktemp("solve") / "run", data, "max_steps=2", "checkpoint_every_steps=1", "ema=true", saved
    )


@pytest.fixture(scope="module")
def test_puzzles(data) -> tuple[list[str], list[str]]:
    """The quick-start test split as text: questions ('.' blanks) and their answers."""
    inputs, labels = (np.load(f"{data}/test/all__{k}.npy")[:20] for k in ("inputs", "labels"))
    return [_text(q) for q in inputs], [_text(a) for a in labels]


def _text(tokens: np.ndarray) -> str:
    return "".join("." if t == 1 else str(t - 1) for t in tokens)


def _run(capsys, *args: str) -> tuple[int, str, str]:
    rc = solve.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def _json(capsys, *args: str) -> dict:
    rc, out, err = _run(capsys, *args, "--json")
    assert rc == 0, err
    return json.loads(out)


def _valid_4x4(puzzle: str, solution: str) -> bool:
    """Written out independently of solve.py: rows, columns and boxes hold 1-4, clues are kept."""
    if len(solution) != 16 or any(c not in "1234" for c in solution):
        return False
    rows = [solution[4 * r : 4 * r + 4] for r in range(4)]
    cols = ["".join(row[c] for row in rows) for c in range(4)]
    boxes = ["".join(rows[r][c] for r in (br, br + 1) for c in (bc, bc + 1)) for br in (0, 2) for bc in (0, 2)]
    units_ok = all(sorted(unit) == list("1234") for unit in rows + cols + boxes)
    return units_ok and all(p in ".0" or p == s for p, s in zip(puzzle, solution, strict=True))


def test_a_puzzle_on_the_command_line_prints_its_grid_and_validity(capsys, sudoku_run, test_puzzles):
    puzzle = test_puzzles[0][0]
    rc, out, err = _run(capsys, sudoku_run, "--puzzle", puzzle)
    assert rc == 0, err
    report = _json(capsys, sudoku_run, "--puzzle", puzzle)
    record = report["puzzles"][0]
    assert report["step"] == 2 and report["weights"] == "ema" and report["kind"] == "sudoku"
    assert record["input"] == puzzle and len(record["solution"]) == 16
    assert record["valid"] == _valid_4x4(puzzle, record["solution"])
    assert record["correct"] is None  # no answer was given
    assert 1 <= record["halt_step"] <= report["halt_max_steps"] and 0 < record["confidence"] < 1
    lines = out.splitlines()
    assert "step 2, EMA weights, 4x4 Sudoku" in lines[0]
    verdict = "a valid solution" if record["valid"] else f"NOT valid: {record['problem']}"
    assert lines[1].startswith("#1 --puzzle 1: ") and verdict in lines[1]
    # The printed solution grid is the one in the JSON report (right-hand column, box rules between).
    s = record["solution"]
    expected = [f"{s[r * 4]} {s[r * 4 + 1]} | {s[r * 4 + 2]} {s[r * 4 + 3]}" for r in range(4)]
    printed = [line.split("    ")[-1].strip() for line in lines[3:8] if "-+-" not in line]
    assert printed == expected


def test_answers_are_those_of_the_runs_own_evaluation(capsys, tmp_path, sudoku_run, data):
    # The final evaluation ran the EMA weights of step 2 in batches of 8, as solve.py does here.
    saved = np.load(sudoku_run / "eval_step_2" / "outputs_process0.npz")
    path = tmp_path / "puzzles.txt"
    path.write_text("\n".join(_text(q) for q in np.load(f"{data}/test/all__inputs.npy")[:20]))
    records = _json(capsys, sudoku_run, "--file", path, "--batch-size", 8)["puzzles"]
    assert [r["solution"] for r in records] == [solve.flat_text(p, "sudoku") for p in saved["preds"][:20]]
    assert [r["halt_step"] for r in records] == saved["halt_step"][:20].tolist()
    np.testing.assert_allclose([r["confidence"] for r in records], solve.confidence(saved["q_halt_logits"][:20]))


def test_sudoku_validity_is_checked_against_the_clues(test_puzzles):
    questions, answers = test_puzzles
    tokens = [np.array([1 if c == "." else int(c) + 1 for c in s]) for s in questions + answers]
    inputs, labels = np.stack(tokens[: len(questions)]), np.stack(tokens[len(questions) :])
    assert solve.sudoku_problems(inputs, labels) == [None] * len(inputs)
    swapped = labels.copy()
    swapped[:, [0, 1]] = swapped[:, [1, 0]]  # within row and box: columns 0 and 1 now repeat a digit
    clue_moved = (inputs[:, 0] > 1) | (inputs[:, 1] > 1)
    expected = ["it changes a clue" if c else "a digit repeats in a row, column or box" for c in clue_moved]
    assert solve.sudoku_problems(inputs, swapped) == expected
    # A complete, valid grid that ignores the clues is no solution of the puzzle.
    relabelled = np.where(labels == 2, 3, np.where(labels == 3, 2, labels))
    clue_1_or_2 = np.any((inputs == 2) | (inputs == 3), axis=1)
    assert solve.sudoku_problems(inputs, relabelled) == [("it changes a clue" if c else None) for c in clue_1_or_2]
    blank = labels.copy()
    blank[:, 5] = 1  # a blank left in the answer
    assert solve.sudoku_problems(inputs, blank) == ["a cell holds no digit"] * len(inputs)


def test_a_file_of_puzzles_goes_through_the_eval_step_in_batches(
    capsys, monkeypatch, tmp_path, sudoku_run, test_puzzles
):
    questions, answers = test_puzzles
    calls = []
    make = solve.make_eval_step

    def counting_make_eval_step(**kwargs):
        step = make(**kwargs)

        def eval_step(variables, puzzle_emb, batch):
            calls.append(batch["inputs"].shape)
            return step(variables, puzzle_emb, batch)

        return eval_step

    monkeypatch.setattr(solve, "make_eval_step", counting_make_eval_step)
    lines = tmp_path / "puzzles.txt"
    # Both blank spellings, indentation and an empty line.
    lines.write_text("\n".join(f"  {q.replace('.', '0') if i % 2 else q}" for i, q in enumerate(questions)) + "\n\n")
    report = _json(capsys, sudoku_run, "--file", lines, "--batch-size", 8)
    assert calls == [(8, 16)] * 3
    records = report["puzzles"]
    assert [r["input"] for r in records] == questions
    assert [r["source"] for r in records] == [f"{lines} line {i}" for i in range(1, 21)]
    assert [r["valid"] for r in records] == [
        _valid_4x4(q, r["solution"]) for q, r in zip(questions, records, strict=True)
    ]

    csv = tmp_path / "puzzles.csv"
    csv.write_text(
        "source,question,answer,rating\n" + "".join(f"t,{q},{a},0\n" for q, a in zip(questions, answers, strict=True))
    )
    from_csv = _json(capsys, sudoku_run, "--file", csv)
    assert [r["solution"] for r in from_csv["puzzles"]] == [r["solution"] for r in records]
    assert [r["correct"] for r in from_csv["puzzles"]] == [
        r["solution"] == a for r, a in zip(records, answers, strict=True)
    ]
    assert "known answer" not in report["summary"] and "of 20 with a known answer correct" in from_csv["summary"]


def test_step_and_raw_weights(capsys, monkeypatch, sudoku_run, test_puzzles):
    report = _json(capsys, sudoku_run, "--puzzle", test_puzzles[0][0], "--step", 1, "--raw")
    assert (report["step"], report["weights"]) == (1, "raw")
    assert report["checkpoint_dir"] == str(sudoku_run / "checkpoints")
    # A step directory works as the source too, and so does a relative path (as in the README).
    assert _json(capsys, sudoku_run / "checkpoints" / "1", "--puzzle", test_puzzles[0][0])["step"] == 1
    monkeypatch.chdir(sudoku_run.parent)
    assert _json(capsys, sudoku_run.name, "--puzzle", test_puzzles[0][0])["step"] == 2


def test_checkpoints_and_puzzle_files_on_gcs(capsys, gcs_emulator, tmp_path, data, test_puzzles):
    root = f"gs://{gcs_emulator['bucket']}/solve"
    run = _train(
        tmp_path / "run", data, "max_steps=1", f"checkpoint_root={root}", "experiment_group=g", "experiment_name=n"
    )
    capsys.readouterr()  # what training printed
    fsspec.filesystem("gs").pipe(f"{root}/puzzles.txt", "\n".join(test_puzzles[0][:3]).encode())
    # The run directory finds its checkpoints through its config; the checkpoint directory is one itself.
    for source in (run, f"{root}/g/n"):
        report = _json(capsys, source, "--file", f"{root}/puzzles.txt")
        assert (report["checkpoint_dir"], report["step"]) == (f"{root}/g/n", 1)
        assert [r["input"] for r in report["puzzles"]] == test_puzzles[0][:3]


def test_png_draws_every_puzzle_and_never_replaces_a_file(capsys, tmp_path, sudoku_run, test_puzzles):
    png = tmp_path / "sheet.png"
    rc, _, err = _run(capsys, sudoku_run, *[a for q in test_puzzles[0][:3] for a in ("--puzzle", q)], "--png", png)
    assert rc == 0, err
    height, width = matplotlib.image.imread(png).shape[:2]
    assert (width, height) == sheet_size(3)
    before = png.read_bytes()
    rc, _, err = _run(capsys, sudoku_run, "--puzzle", test_puzzles[0][0], "--png", png)
    assert rc == 1 and "already exists" in err and png.read_bytes() == before
    rc, _, err = _run(capsys, sudoku_run, "--puzzle", test_puzzles[0][0], "--png", png, "--force")
    assert rc == 0 and matplotlib.image.imread(png).shape[:2] == sheet_size(1)[::-1]


def _other_architecture(run: Path, tmp: Path) -> Path:
    """A copy of the run whose saved config claims a wider model than its weights."""
    copy = tmp / "other"
    shutil.copytree(run, copy)
    for meta in copy.glob("checkpoints/*/meta/metadata"):
        saved = json.loads(meta.read_text())
        saved["config"]["arch"].update(hidden_size=64, num_heads=4)
        meta.write_text(json.dumps(saved))
    return copy


BAD_INPUTS = {
    "too short": (lambda run, tmp: [run, "--puzzle", "1.3."], "4 characters, but this model solves 4x4 Sudoku"),
    "larger than the model": (lambda run, tmp: [run, "--puzzle", "." * 81], "81 characters, but this model solves"),
    "not a character": (lambda run, tmp: [run, "--puzzle", "1..x" + "." * 12], "character 'x' at position 4"),
    "digit outside 4x4": (lambda run, tmp: [run, "--puzzle", "5" + "." * 15], "character '5' at position 1"),
    "missing run": (lambda run, tmp: [tmp / "nope", "--puzzle", "." * 16], "no such run or checkpoint directory"),
    "not a run": (lambda run, tmp: [tmp, "--puzzle", "." * 16], "is neither a run directory"),
    "missing step": (lambda run, tmp: [run, "--step", 7, "--puzzle", "." * 16], "no step 7"),
    "other architecture": (
        lambda run, tmp: [_other_architecture(run, tmp), "--puzzle", "." * 16],
        "holds weights of another architecture",
    ),
    "ARC file for Sudoku": (lambda run, tmp: [run, "--file", _write(tmp / "t.json", "{}")], "read as ARC tasks"),
    "bad CSV row": (
        lambda run, tmp: [run, "--file", _write(tmp / "p.csv", "source,question,answer,rating\nx,1...,1234,0\n")],
        "line 2",
    ),
    "CSV answer with a blank": (
        lambda run, tmp: [
            run,
            "--file",
            _write(tmp / "p.csv", "source,question,answer,rating\nx,{0},{0},0\n".format("." * 16)),
        ],
        "line 2 answer: character '.' at position 1 is not a digit 1-4 (an answer has no blanks)",
    ),
    "bad line in a file": (
        lambda run, tmp: [run, "--file", _write(tmp / "p.txt", "." * 16 + "\n123\n")],
        "p.txt line 2",
    ),
    "empty file": (lambda run, tmp: [run, "--file", _write(tmp / "p.txt", "\n\n")], "no puzzles in it"),
    "missing file": (lambda run, tmp: [run, "--file", tmp / "absent.txt"], "file not found"),
    "ARC task for Sudoku": (lambda run, tmp: [run, "--puzzle", "." * 16, "--task", "abc"], "--task selects ARC tasks"),
    "PNG name": (lambda run, tmp: [run, "--puzzle", "." * 16, "--png", tmp / "x.jpg"], "must end in .png"),
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line(capsys, tmp_path, sudoku_run, case):
    make_args, message = BAD_INPUTS[case]
    rc, out, err = _run(capsys, *make_args(sudoku_run, tmp_path))
    assert rc == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("solve.py: error: ") and message in err, err


def test_maze_solutions_are_checked_as_shortest_paths(capsys, tmp_path):
    generate_mazes(str(tmp_path / "src"), num_train=8, num_test=3, min_path_length=20, seed=0)
    build_maze(str(tmp_path / "src"), str(tmp_path / "data"))
    run = _train(tmp_path / "run", str(tmp_path / "data"), "data_generator=null", "max_steps=1")
    capsys.readouterr()  # what training printed
    report = _json(capsys, run, "--file", tmp_path / "src" / "test.csv")
    assert report["kind"] == "maze" and len(report["puzzles"]) == 3
    lines = (tmp_path / "src" / "test.csv").read_text().splitlines()[1:]
    for record, line in zip(report["puzzles"], lines, strict=True):
        _, question, answer, _ = line.split(",")
        assert record["input"] == question and len(record["solution"]) == 900
        assert record["correct"] == (record["solution"] == answer)
        problem = solve.maze_problem(_maze_tokens(question), _maze_tokens(record["solution"]))
        assert (record["valid"], record["problem"]) == (problem is None, problem)

    _, question, answer, _ = lines[0].split(",")
    q, a = _maze_tokens(question), _maze_tokens(answer)
    assert solve.maze_problem(q, a) is None
    gap = a.copy()
    gap[np.flatnonzero(a == solve.PATH)[0]] = solve.OPEN  # a path with a hole
    assert "not a shortest S-G path" in solve.maze_problem(q, gap)
    extra = a.copy()
    extra[np.flatnonzero((q == solve.OPEN) & (a != solve.PATH))[0]] = solve.PATH  # one cell too many
    assert "not a shortest S-G path" in solve.maze_problem(q, extra)
    wall = a.copy()
    wall[np.flatnonzero(a == solve.PATH)[0]] = solve.WALL  # the answer may not change the maze
    assert solve.maze_problem(q, wall) == "it changes cells other than marking open ones with 'o'"
    walled_in = q.copy().reshape(30, 30)
    ((r, c),) = np.argwhere(walled_in == solve.START)
    for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
        walled_in[nr, nc] = solve.WALL  # S is never on the border: the builder keeps an outer wall
    assert solve.maze_problem(walled_in.reshape(-1), walled_in.reshape(-1)) == "no route joins S and G"


def _maze_tokens(text: str) -> np.ndarray:
    return np.array(["?# SGo".index(c) if c in solve.MAZE_SYMBOLS else 0 for c in text])


def test_arc_tasks_vote_over_the_models_augmentations(capsys, tmp_path):
    prefix = str(tmp_path / "arc")
    write_tiny_arc(prefix, (("training", 2), ("evaluation", 1)))
    args = ["--input-file-prefix", prefix, "--output-dir", str(tmp_path / "data"), "--subsets", "training"]
    build_arc([*args, "evaluation", "--test-set-name", "evaluation", "--num-aug", "3"])
    run = _train(tmp_path / "run", str(tmp_path / "data"), "data_generator=null", "max_steps=1")
    capsys.readouterr()  # what training printed
    tasks = json.loads(Path(f"{prefix}_evaluation_challenges.json").read_text())
    solutions = json.loads(Path(f"{prefix}_evaluation_solutions.json").read_text())
    names = json.loads((tmp_path / "data" / "identifiers.json").read_text())
    png = tmp_path / "arc.png"

    report = _json(capsys, run, "--file", f"{prefix}_evaluation_challenges.json", "--png", png)
    (task,) = tasks
    assert report["kind"] == "arc" and [r["task"] for r in report["puzzles"]] == [task] * len(tasks[task]["test"])
    versions = sum(name.split("|||")[0] == task for name in names)
    for i, record in enumerate(report["puzzles"]):
        assert record["test_index"] == i and record["augmentations"] == versions == 4
        assert 1 <= len(record["attempts"]) <= 2
        assert record["correct"] == (solutions[task][i] in record["attempts"])
    assert set(report["scores"]) >= {"ARC/pass@1", "ARC/pass@2"}
    assert matplotlib.image.imread(png).shape[:2] == sheet_size(len(report["puzzles"]))[::-1]

    # Without the solutions file the answers are unknown: no verdicts, no scores.
    alone = tmp_path / "alone.json"
    alone.write_text(json.dumps(tasks))
    unknown = _json(capsys, run, "--file", alone)
    assert [r["correct"] for r in unknown["puzzles"]] == [None] * len(tasks[task]["test"]) and unknown["scores"] is None

    # A task the model has no embedding for, and a --task that the file lacks.
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"ffffffff": tasks[task]}))
    rc, _, err = _run(capsys, run, "--file", foreign)
    assert rc == 1 and "task ffffffff (and 0 more) is not among the 3 tasks" in err and err.count("\n") == 1
    rc, _, err = _run(capsys, run, "--file", alone, "--task", "nope")
    assert rc == 1 and "no task 'nope'" in err
    rc, _, err = _run(capsys, run, "--puzzle", "." * 900)
    assert rc == 1 and "this is an ARC model" in err
