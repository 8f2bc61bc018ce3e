"""Solve puzzles with a trained TRM: Sudoku, mazes and ARC tasks, straight from a run's checkpoint.

    python solve.py runs/quickstart/sudoku4 --puzzle 214334..1.34..1.
    python solve.py RUN --file data/sudoku-extreme-full/test.csv --json > answers.json
    python solve.py RUN --file mazes.csv --png mazes.png
    python solve.py RUN --file arc-agi_evaluation_challenges.json --task 00576224

RUN is a run directory, its checkpoint directory, one step directory of it, or such a directory
on gs://. The newest step is used unless --step says otherwise, with the EMA weights when the run
kept them (--raw: the raw weights). What the model solves follows from its checkpoint (sequence
length and vocabulary): Sudoku of one size, square mazes, or ARC.

Puzzles go through training's jitted evaluation step in batches (every row runs all
halt_max_steps ACT steps). The answer shown is the last step's, as evaluation scores it, with
the step at which the Q head would first have halted (first q_halt > 0; the limit if it never
says halt) and the confidence sigmoid(q_halt) of the last step.

  Sudoku  --puzzle with 16 (4x4) or 81 (9x9) characters, digits and '.' or '0' for blanks, or a
          --file of one puzzle per line or in the Sudoku-Extreme CSV layout
          (source,question,answer,rating; the answer is then known). Every solution is checked
          for validity against its clues, with or without a known answer.
  maze    a --file in the Maze-Hard CSV layout (or --puzzle) of "# SGo" cells; a solution is
          checked to be a shortest S-G path.
  ARC     a --file of tasks in the Kaggle JSON layout (the *_solutions.json next to a
          *_challenges.json gives the answers). Only tasks the model trained on can be solved (it
          learns one puzzle embedding per task): each test input runs under every augmentation
          in the run's dataset (its identifiers.json; --data to point elsewhere) and the answers
          are voted on as in evaluation (evaluators/arc.py); two attempts per test input.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import fsspec
import jax
import numpy as np
from jax.tree_util import keystr, tree_leaves_with_path

from dataset.arc_grids import CANVAS, PAD, SEPARATOR, augment, grid_to_np, to_sequences
from dataset.csv_io import HEADER, read_puzzle_csv
from dataset.errors import DatasetError
from dataset.format import BLANK_IDENTIFIER, load_metadata
from dataset.storage import read_text
from dataset.sudoku import invalid_rows
from evaluators.arc import ArcEvaluator
from evaluators.render import infer_kind, render_sheet
from models.config import ArchConfig
from models.losses import IGNORE_LABEL_ID
from models.trm import build_model, init_variables
from scripts.export_official import ExportError, TrainedWeights, load_trained_weights
from training.config import ConfigError, compose, validate
from training.sharding import Shardings, global_batch, make_shardings
from training.step import make_eval_step

MAZE_SYMBOLS = "# SGo"  # token = index + 1, as the maze builder writes them
WALL, OPEN, START, GOAL, PATH = range(1, 6)
SUDOKU_BLANK = 1  # token of an empty cell; digit d is token d + 1
BATCH_FILL = {"inputs": PAD, "labels": IGNORE_LABEL_ID, "puzzle_identifiers": 0}


class SolveError(ValueError):
    """Bad input to solve.py: the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class Puzzle:
    source: str  # where it came from: "--puzzle 2", "FILE line 7"
    inputs: np.ndarray  # [seq_len] tokens
    labels: np.ndarray | None  # [seq_len] tokens of the known answer


@dataclass
class Solver:
    """A checkpoint's weights on the devices and the evaluation program of its architecture."""

    weights: TrainedWeights
    kind: str
    eval_step: Callable
    sh: Shardings
    variables: dict
    puzzle_emb: jax.Array
    batch_size: int

    @property
    def seq_len(self) -> int:
        return self.weights.seq_len

    @property
    def side(self) -> int:
        return math.isqrt(self.seq_len)

    @property
    def halt_max_steps(self) -> int:
        return self.weights.arch.halt_max_steps

    def describe(self) -> str:
        if self.kind == "arc":
            return "ARC"
        return f"{self.side}x{self.side} {'Sudoku' if self.kind == 'sudoku' else 'mazes'}"

    def run(self, inputs: np.ndarray, labels: np.ndarray, puzzle_ids: np.ndarray) -> dict[str, np.ndarray]:
        """preds [N, seq_len], q_halt_logits [N] and halt_step [N] of N rows, in batches of one
        compiled size (the last one padded)."""
        n = len(inputs)
        rows = -(-min(self.batch_size, n) // self.sh.data_size) * self.sh.data_size
        parts = []
        for start in range(0, n, rows):
            batch = {
                "inputs": inputs[start : start + rows],
                "labels": labels[start : start + rows],
                "puzzle_identifiers": puzzle_ids[start : start + rows],
            }
            real = len(batch["inputs"])
            batch = {
                k: np.concatenate([v, np.full((rows - real, *v.shape[1:]), BATCH_FILL[k])]).astype(np.int32)
                for k, v in batch.items()
            }
            _, outputs = self.eval_step(self.variables, self.puzzle_emb, global_batch(batch, self.sh))
            parts.append({k: np.asarray(v)[:real] for k, v in jax.device_get(outputs).items()})
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def load_solver(source: str, *, step: int | None, raw: bool, batch_size: int) -> Solver:
    try:
        weights = load_trained_weights(source, step=step, raw=raw)
    except ExportError as e:
        raise SolveError(str(e)) from None
    dims = weights.dims
    try:
        kind = infer_kind(seq_len=dims.seq_len, vocab_size=dims.vocab_size)
    except ValueError:
        raise SolveError(
            f"{weights.checkpoint_dir} step {weights.step}: a model of seq_len={dims.seq_len} and "
            f"vocab_size={dims.vocab_size} is none of the puzzles solve.py knows (Sudoku, maze, ARC)"
        ) from None
    model = build_model(weights.arch, dims)
    _check_architecture(weights, jax.eval_shape(lambda: init_variables(model, jax.random.key(0))))
    sh = make_shardings()
    arch = weights.arch
    eval_step = make_eval_step(
        cfg=_eval_config(arch), model=model, sh=sh, H_cycles=arch.H_cycles, L_cycles=arch.L_cycles
    )
    return Solver(
        weights=weights,
        kind=kind,
        eval_step=eval_step,
        sh=sh,
        variables=jax.device_put(weights.variables, sh.replicated),
        puzzle_emb=jax.device_put(weights.puzzle_emb, sh.replicated),
        batch_size=batch_size,
    )


def _check_architecture(weights: TrainedWeights, expected: dict) -> None:
    """The saved weights must be exactly those of the architecture saved with them."""
    saved, wanted = (
        {_name(p): np.shape(x) for p, x in tree_leaves_with_path(t)} for t in (weights.variables, expected)
    )
    if saved == wanted:
        return
    problems = [f"{k} missing" for k in wanted.keys() - saved.keys()]
    problems += [f"{k} unexpected" for k in saved.keys() - wanted.keys()]
    problems += [
        f"{k} is {saved[k]}, expected {wanted[k]}" for k in saved.keys() & wanted.keys() if saved[k] != wanted[k]
    ]
    arch = weights.arch
    raise SolveError(
        f"step {weights.step} in {weights.checkpoint_dir} holds weights of another architecture than the one "
        f"saved with it (hidden_size={arch.hidden_size}, L_layers={arch.L_layers}, mlp_t={arch.mlp_t}, "
        f"pos_encodings={arch.pos_encodings}): {'; '.join(sorted(problems)[:3])}; solve it with the code that "
        "trained it"
    )


def _name(path) -> str:
    return keystr(path, simple=True, separator="/")


def _eval_config(arch: ArchConfig):
    """A valid training config around the checkpoint's architecture: the evaluation step reads
    only `arch` from it."""
    return validate(compose("cfg_pretrain")).model_copy(update={"arch": arch})


# Sudoku and maze text


def parse_grid(text: str, solver: Solver, where: str, *, answer: bool = False) -> np.ndarray:
    """Tokens of one puzzle (or, with `answer`, of its solution) typed as text."""
    if len(text) != solver.seq_len:
        raise SolveError(
            f"{where}: {len(text)} characters, but this model solves {solver.describe()} ({solver.seq_len} cells); "
            f"give exactly {solver.seq_len}"
        )
    if solver.kind == "sudoku":
        digits = "".join(str(d) for d in range(1, min(solver.side, 9) + 1))
        table = {d: int(d) + 1 for d in digits} | ({} if answer else {".": SUDOKU_BLANK, "0": SUDOKU_BLANK})
        allowed = f"a digit 1-{digits[-1]}" + (" (an answer has no blanks)" if answer else " or a blank ('.' or '0')")
    else:
        table = {ch: i + 1 for i, ch in enumerate(MAZE_SYMBOLS)}
        allowed = f"one of {MAZE_SYMBOLS!r} (wall, open, start, goal, path)"
    for i, ch in enumerate(text):
        if ch not in table:
            raise SolveError(f"{where}: character {ch!r} at position {i + 1} is not {allowed}")
    return np.array([table[ch] for ch in text], np.int32)


def grid_text(tokens: np.ndarray, kind: str) -> list[str]:
    """Rows of a Sudoku (box rules between boxes) or maze as text; a token that is no digit or
    maze symbol shows as '?'."""
    side = math.isqrt(len(tokens))
    if kind == "maze":
        symbols = "?" + MAZE_SYMBOLS
        return [
            "".join(symbols[t] if 0 < t <= len(MAZE_SYMBOLS) else "?" for t in row)
            for row in tokens.reshape(side, side)
        ]
    box = math.isqrt(side)
    lines = []
    for r, row in enumerate(tokens.reshape(side, side)):
        if r and r % box == 0:
            lines.append("-+-".join(["-" * (2 * box - 1)] * box))
        cells = [_sudoku_char(t, side) for t in row]
        lines.append(" | ".join(" ".join(cells[b : b + box]) for b in range(0, side, box)))
    return lines


def _sudoku_char(token: int, side: int) -> str:
    if token == SUDOKU_BLANK:
        return "."
    return str(token - 1) if 2 <= token <= side + 1 else "?"


def flat_text(tokens: np.ndarray, kind: str) -> str:
    side = math.isqrt(len(tokens))
    return "".join(grid_text(tokens, "maze") if kind == "maze" else (_sudoku_char(t, side) for t in tokens))


def sudoku_problems(inputs: np.ndarray, preds: np.ndarray) -> list[str | None]:
    """Per row, why the prediction is no solution of its puzzle; None for a solution (every cell a
    digit, every clue kept, no digit twice in a row, column or box)."""
    side = math.isqrt(inputs.shape[1])

    def digits(x):
        return np.where((x >= 2) & (x <= side + 1), x - 1, 0)

    broken = np.zeros(len(inputs), bool)
    broken[invalid_rows(digits(inputs), digits(preds), math.isqrt(side))] = True
    problems = []
    for x, p, bad in zip(digits(inputs), digits(preds), broken, strict=True):
        if not p.all():
            problems.append("a cell holds no digit")
        elif np.any((x > 0) & (x != p)):
            problems.append("it changes a clue")
        else:
            problems.append("a digit repeats in a row, column or box" if bad else None)
    return problems


def maze_problem(inputs: np.ndarray, pred: np.ndarray) -> str | None:
    """Why the prediction is no shortest S-G path marked with 'o' on open cells (changing nothing
    else); None when it is one."""
    side = math.isqrt(len(inputs))
    q, p = inputs.reshape(side, side), pred.reshape(side, side)
    if (q == START).sum() != 1 or (q == GOAL).sum() != 1:
        return "the maze needs exactly one S and one G"
    if np.any((p != q) & ~((q == OPEN) & (p == PATH))):
        return "it changes cells other than marking open ones with 'o'"
    start, goal = (tuple(np.argwhere(q == t)[0]) for t in (START, GOAL))
    shortest = _distance((q >= OPEN) & (q <= PATH), start, goal)
    if shortest is None:
        return "no route joins S and G"
    # With exactly shortest - 1 path cells, a connected S-G route through them is a shortest path.
    if (p == PATH).sum() != shortest - 1 or _distance(p >= START, start, goal) != shortest:
        return f"the 'o' cells are not a shortest S-G path ({shortest - 1} cells)"
    return None


def _distance(passable: np.ndarray, start: tuple, goal: tuple) -> int | None:
    """Steps of the shortest 4-connected route through passable cells, None if there is none."""
    dist = {start: 0}
    todo = deque([start])
    while todo:
        cell = todo.popleft()
        if cell == goal:
            return dist[cell]
        r, c = cell
        for nxt in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            inside = 0 <= nxt[0] < passable.shape[0] and 0 <= nxt[1] < passable.shape[1]
            if inside and passable[nxt] and nxt not in dist:
                dist[nxt] = dist[cell] + 1
                todo.append(nxt)
    return None


def read_puzzle_file(path: str, solver: Solver) -> list[Puzzle]:
    """One puzzle per line, or the Sudoku-Extreme / Maze-Hard CSV layout (with answers)."""
    if path.endswith(".json"):
        raise SolveError(f"{path}: a JSON file is read as ARC tasks, but this model solves {solver.describe()}")
    text = _read(path)
    if text.split("\n", 1)[0].strip() == ",".join(HEADER):
        try:
            rows = read_puzzle_csv(path, solver.seq_len)
        except DatasetError as e:
            raise SolveError(f"{e} (this model solves {solver.describe()})") from None
        return [
            Puzzle(
                f"{path} line {line}",
                parse_grid(q, solver, f"{path} line {line} question"),
                parse_grid(a, solver, f"{path} line {line} answer", answer=True),
            )
            for q, a, line in zip(rows.questions, rows.answers, rows.lines, strict=True)
        ]
    puzzles = []
    for number, line in enumerate(text.splitlines(), 1):
        # Trailing spaces are open maze cells; Sudoku lines may be indented.
        line = line.strip() if solver.kind == "sudoku" else line.rstrip("\r\n")
        if line.strip():
            puzzles.append(Puzzle(f"{path} line {number}", parse_grid(line, solver, f"{path} line {number}"), None))
    if not puzzles:
        raise SolveError(f"{path}: no puzzles in it (one per line, or the CSV layout {','.join(HEADER)})")
    return puzzles


def _read(path: str) -> str:
    try:
        return read_text(path)
    except DatasetError as e:
        raise SolveError(str(e)) from None


def solve_grids(solver: Solver, puzzles: Sequence[Puzzle]) -> list[dict]:
    """Every puzzle through the model: one record per puzzle."""
    inputs = np.stack([p.inputs for p in puzzles])
    labels = np.stack([p.labels if p.labels is not None else np.full_like(p.inputs, IGNORE_LABEL_ID) for p in puzzles])
    out = solver.run(inputs, labels, np.zeros(len(puzzles), np.int32))
    if solver.kind == "sudoku":
        problems = sudoku_problems(inputs, out["preds"])
    else:
        problems = [maze_problem(x, p) for x, p in zip(inputs, out["preds"], strict=True)]
    records = []
    for i, p in enumerate(puzzles):
        q = float(out["q_halt_logits"][i])
        records.append(
            {
                "source": p.source,
                "input": flat_text(p.inputs, solver.kind),
                "solution": flat_text(out["preds"][i], solver.kind),
                "halt_step": int(out["halt_step"][i]),
                "halted_by_q": bool(out["halt_step"][i] < solver.halt_max_steps or q > 0),
                "confidence": float(confidence(q)),
                "valid": problems[i] is None,
                "problem": problems[i],
                "correct": None if p.labels is None else bool(np.array_equal(out["preds"][i], p.labels)),
                "tokens": {"inputs": p.inputs, "preds": out["preds"][i], "labels": labels[i]},
            }
        )
    return records


def confidence(q_halt_logits):
    """sigmoid(q_halt): the Q head's probability that the answer is right."""
    return 1 / (1 + np.exp(-np.asarray(q_halt_logits, np.float64)))


# ARC


@dataclass(frozen=True)
class ArcTask:
    name: str
    inputs: list[np.ndarray]  # test input grids
    outputs: list[np.ndarray | None]  # known test output grids


def read_arc_tasks(path: str, only: Sequence[str]) -> list[ArcTask]:
    """The tasks of a Kaggle challenges file; answers from its test pairs or the solutions file
    next to it."""
    tasks = _json_object(path, "a Kaggle challenges file: task name -> {train, test}")
    solutions = {}
    if path.endswith("_challenges.json"):
        sibling = path[: -len("_challenges.json")] + "_solutions.json"
        if _exists(sibling):
            solutions = _json_object(sibling, "task name -> list of test output grids")
    missing = [name for name in only if name not in tasks]
    if missing:
        raise SolveError(f"{path}: no task {missing[0]!r} in it ({len(tasks)} tasks, e.g. {sorted(tasks)[:3]})")
    out = []
    for name in only or sorted(tasks):
        test = tasks[name].get("test") if isinstance(tasks[name], dict) else None
        if not isinstance(test, list) or not test or not all(isinstance(pair, dict) for pair in test):
            raise SolveError(f'{path} task {name}: expected an object with a non-empty "test" list of pairs')
        known = solutions.get(name, [])
        if not isinstance(known, list):
            raise SolveError(f"{sibling} task {name}: expected a list of test output grids")
        inputs, outputs = [], []
        for i, pair in enumerate(test):
            where = f"{path} task {name} test {i}"
            try:
                inputs.append(grid_to_np(pair.get("input"), f"{where} input"))
                answer = pair.get("output", known[i] if i < len(known) else None)
                outputs.append(None if answer is None else grid_to_np(answer, f"{where} output"))
            except DatasetError as e:
                raise SolveError(str(e)) from None
        out.append(ArcTask(name, inputs, outputs))
    return out


def _json_object(path: str, expected: str) -> dict:
    try:
        data = json.loads(_read(path))
    except json.JSONDecodeError as e:
        raise SolveError(f"{path}: not valid JSON ({e}); expected {expected}") from None
    if not isinstance(data, dict):
        raise SolveError(f"{path}: expected a JSON object ({expected}), got {type(data).__name__}")
    return data


def _exists(path: str) -> bool:
    fs, local = fsspec.core.url_to_fs(path)
    return fs.exists(local)


def model_identifiers(solver: Solver, data: Sequence[str] | None) -> tuple[list[str], str]:
    """The names of the model's puzzle-embedding rows (identifiers.json of each training dataset,
    in order, as the loader numbers them) and the first dataset's path."""
    paths = list(data or solver.weights.config.get("data_paths", []))
    names = []
    for path in paths:
        try:
            names += json.loads(_read(f"{path.rstrip('/')}/identifiers.json"))
        except SolveError as e:
            raise SolveError(f"{e}; pass --data with the dataset directories the run trained on") from None
    if len(names) != len(solver.weights.puzzle_emb):
        raise SolveError(
            f"the datasets {paths} name {len(names)} puzzles, but the model has {len(solver.weights.puzzle_emb)} "
            "puzzle embeddings; pass --data with the dataset directories the run trained on"
        )
    return names, paths[0]


def _augmentations(names: Sequence[str]) -> dict[str, list[tuple[int, int, np.ndarray]]]:
    """Task name -> (puzzle id, dihedral transform, colour map) of each of its versions."""
    identity = np.arange(10, dtype=np.uint8)
    versions: dict[str, list] = {}
    for pid, name in enumerate(names):
        if name == BLANK_IDENTIFIER:
            continue
        if SEPARATOR in name:
            task, tid, colours = name.split(SEPARATOR)
            versions.setdefault(task, []).append((pid, int(tid[1:]), np.array(list(colours), np.uint8)))
        else:
            versions.setdefault(name, []).append((pid, 0, identity))
    return versions


def arc_rows(tasks: Sequence[ArcTask], names: Sequence[str]) -> dict[str, np.ndarray]:
    """Every test input of every task under every augmentation the model has an embedding for,
    on the canvas at the origin as in the test split (labels where the answer is known)."""
    versions = _augmentations(names)
    unknown = [t.name for t in tasks if t.name not in versions]
    if unknown:
        raise SolveError(
            f"task {unknown[0]} (and {len(unknown) - 1} more) is not among the {len(versions)} tasks the model has "
            "puzzle embeddings for: TRM solves only tasks whose demonstrations it trained on (train on a dataset "
            "built with it, or pass --data with the run's dataset)"
        )
    rows: dict[str, list] = {"inputs": [], "labels": [], "puzzle_identifiers": [], "test": []}
    for t, task in enumerate(tasks):
        for i, (inp, out) in enumerate(zip(task.inputs, task.outputs, strict=True)):
            for pid, tid, colours in versions[task.name]:
                a_in = augment(inp, tid, colours)
                a_out = a_in if out is None else augment(out, tid, colours)
                x, y = to_sequences(a_in, a_out, (0, 0))
                rows["inputs"].append(x)
                rows["labels"].append(np.where((y == PAD) | (out is None), IGNORE_LABEL_ID, y))
                rows["puzzle_identifiers"].append(pid)
                rows["test"].append((t, i))
    return {k: np.asarray(v, np.int32) for k, v in rows.items()}


def solve_arc(solver: Solver, tasks: Sequence[ArcTask], data: Sequence[str] | None) -> tuple[list[dict], dict | None]:
    """(one record per test input with its two voted attempts, pass@k when every answer is known)."""
    names, data_path = model_identifiers(solver, data)
    rows = arc_rows(tasks, names)
    out = solver.run(rows["inputs"], rows["labels"], rows["puzzle_identifiers"])
    with tempfile.TemporaryDirectory(prefix="solve-arc-") as tmp:
        # The evaluator reads the model's identifiers and the tasks to vote on from a dataset directory.
        with open(os.path.join(tmp, "identifiers.json"), "w") as f:
            json.dump(names, f)
        with open(os.path.join(tmp, "test_puzzles.json"), "w") as f:
            # An unknown answer gets a placeholder; scores are reported only when every answer is known.
            tests = {
                t.name: {
                    "test": [
                        {"input": i.tolist(), "output": [[0]] if o is None else o.tolist()}
                        for i, o in zip(t.inputs, t.outputs, strict=True)
                    ]
                }
                for t in tasks
            }
            json.dump(tests, f)
        evaluator = ArcEvaluator(tmp, load_metadata(data_path, "train"))
        evaluator.update_batch({k: rows[k] for k in ("inputs", "puzzle_identifiers")}, out)
        scores = evaluator.result(tmp)
        with open(os.path.join(tmp, "submission.json")) as f:
            submission = json.load(f)
    records = []
    test_of = rows["test"]
    for t, task in enumerate(tasks):
        for i, (inp, answer) in enumerate(zip(task.inputs, task.outputs, strict=True)):
            mine = (test_of[:, 0] == t) & (test_of[:, 1] == i)
            attempts = [np.asarray(g, np.uint8) for g in submission[task.name][i].values()]
            records.append(
                {
                    "source": f"task {task.name} test {i}",
                    "task": task.name,
                    "test_index": i,
                    "attempts": [g.tolist() for g in attempts],
                    "augmentations": int(mine.sum()),
                    "mean_halt_step": float(out["halt_step"][mine].mean()),
                    "mean_confidence": float(confidence(out["q_halt_logits"][mine]).mean()),
                    "correct": None if answer is None else any(np.array_equal(g, answer) for g in attempts),
                    "grids": {"input": inp, "attempt": attempts[0], "answer": answer},
                }
            )
    all_known = all(o is not None for t in tasks for o in t.outputs)
    return records, scores if all_known else None


def arc_canvas(grid: np.ndarray | None) -> np.ndarray:
    """A grid as a 900-token row (-100 everywhere when there is none), as render.py draws ARC."""
    if grid is None:
        return np.full(CANVAS * CANVAS, IGNORE_LABEL_ID, np.int32)
    return to_sequences(grid, grid, (0, 0))[0].astype(np.int32)


# Output


def print_text(solver: Solver, records: Sequence[dict], scores: dict | None) -> None:
    w = solver.weights
    print(f"{w.checkpoint_dir} step {w.step}, {'EMA' if w.ema else 'raw'} weights, {solver.describe()}")
    describe = _describe_arc if solver.kind == "arc" else _describe_grid
    for i, r in enumerate(records, 1):
        headline, blocks = describe(solver, r)
        print(f"#{i} {r['source']}: {headline}")
        print("\n".join("  " + line for line in side_by_side(blocks)))
    print(summary_line(solver, records, scores))


def _describe_grid(solver: Solver, r: dict) -> tuple[str, list[list[str]]]:
    n = solver.halt_max_steps
    halt = f"Q head halts at ACT step {r['halt_step']}/{n}" if r["halted_by_q"] else f"Q head never halts ({n} steps)"
    what = "a shortest path" if solver.kind == "maze" else "a valid solution"
    check = what if r["valid"] else f"NOT valid: {r['problem']}"
    known = {None: "", True: "; matches the answer", False: "; differs from the answer"}[r["correct"]]
    blocks = [
        ["puzzle", *grid_text(r["tokens"]["inputs"], solver.kind)],
        ["solution", *grid_text(r["tokens"]["preds"], solver.kind)],
    ]
    return f"{halt}, final confidence {r['confidence']:.3f}; {check}{known}", blocks


def _describe_arc(solver: Solver, r: dict) -> tuple[str, list[list[str]]]:
    verdict = {None: "", True: "; correct (pass@2)", False: "; wrong"}[r["correct"]]
    headline = (
        f"{r['augmentations']} augmentations, mean halting step {r['mean_halt_step']:.2f}/{solver.halt_max_steps}, "
        f"mean confidence {r['mean_confidence']:.3f}{verdict}"
    )
    blocks = [[f"attempt {k + 1}", *(" ".join(map(str, row)) for row in g)] for k, g in enumerate(r["attempts"])]
    return headline, blocks


def side_by_side(blocks: Sequence[Sequence[str]], gap: int = 4) -> list[str]:
    widths = [max(map(len, b)) for b in blocks]
    height = max(map(len, blocks))
    return [
        (" " * gap).join(b[r].ljust(w) if r < len(b) else " " * w for b, w in zip(blocks, widths, strict=True)).rstrip()
        for r in range(height)
    ]


def summary_line(solver: Solver, records: Sequence[dict], scores: dict | None) -> str:
    known = [r["correct"] for r in records if r["correct"] is not None]
    noun = "test input" if solver.kind == "arc" else "puzzle"
    parts = [f"{len(records)} {noun}{'s' * (len(records) != 1)}"]
    if solver.kind != "arc":
        parts.append(f"{sum(r['valid'] for r in records)} valid")
    if known:
        parts.append(f"{sum(known)} of {len(known)} with a known answer correct")
    if scores:
        parts.append(", ".join(f"{k}={v:.3f}" for k, v in scores.items()))
    return "; ".join(parts)


def json_report(solver: Solver, records: Sequence[dict], scores: dict | None) -> dict:
    w = solver.weights
    return {
        "checkpoint_dir": w.checkpoint_dir,
        "step": w.step,
        "weights": "ema" if w.ema else "raw",
        "kind": solver.kind,
        "seq_len": w.seq_len,
        "halt_max_steps": solver.halt_max_steps,
        "puzzles": [{k: v for k, v in r.items() if k not in ("tokens", "grids")} for r in records],
        "scores": scores,
        "summary": summary_line(solver, records, scores),
    }


def draw(out: str, solver: Solver, records: Sequence[dict], max_puzzles: int) -> None:
    if solver.kind == "arc":
        grids = [r["grids"] for r in records]
        arrays = {
            "inputs": [arc_canvas(g["input"]) for g in grids],
            "preds": [arc_canvas(g["attempt"]) for g in grids],
            "labels": [arc_canvas(g["answer"]) for g in grids],
        }
        captions = [f"{r['source']}, attempt 1" for r in records]
    else:
        arrays = {k: [r["tokens"][k] for r in records] for k in ("inputs", "preds", "labels")}
        verdicts = ["valid" if r["valid"] else "NOT valid" for r in records]
        captions = [
            f"{r['source']}  halt {r['halt_step']}, conf {r['confidence']:.2f}, {v}"
            for r, v in zip(records, verdicts, strict=True)
        ]
    arrays = {k: np.stack(v) for k, v in arrays.items()}
    render_sheet(out, kind=solver.kind, captions=captions, max_puzzles=max_puzzles, **arrays)


def check_png(out: str, force: bool) -> None:
    """Fail before any work on a picture that cannot or must not be written."""
    if not out.endswith(".png"):
        raise SolveError(f"--png {out}: the picture's name must end in .png")
    if os.path.exists(out) and not force:
        raise SolveError(f"--png {out} already exists; choose another name or pass --force to replace it")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise SolveError(f"--png {out}: directory {folder} does not exist")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="solve.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("source", help="run directory, checkpoint directory or step directory (local or gs://)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--puzzle", action="append", help="a Sudoku or maze as one line of text (repeatable)")
    what.add_argument("--file", help="puzzles: one per line, a Sudoku-Extreme/Maze-Hard CSV, or ARC tasks (.json)")
    p.add_argument("--task", action="append", default=[], help="ARC: solve only this task of --file (repeatable)")
    p.add_argument("--data", action="append", help="ARC: the run's dataset directories (default: its data_paths)")
    p.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--png", help="also draw the puzzles (input, prediction, answer) to this PNG file")
    p.add_argument("--png-rows", type=int, default=8, help="puzzles drawn in the PNG (default 8)")
    p.add_argument("--force", action="store_true", help="replace the --png file if it exists")
    p.add_argument("--batch-size", type=int, default=128, help="rows per call of the evaluation step")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.png_rows < 1:
        p.error("--batch-size and --png-rows must be >= 1")
    return args


def solve(args: argparse.Namespace) -> dict:
    """Everything solve.py does, as a JSON-ready report (printed as text unless --json)."""
    if args.png:
        check_png(args.png, args.force)
    solver = load_solver(args.source, step=args.step, raw=args.raw, batch_size=args.batch_size)
    if solver.kind == "arc":
        if not args.file:
            raise SolveError("this is an ARC model: give tasks with --file TASKS.json (Kaggle challenges layout)")
        records, scores = solve_arc(solver, read_arc_tasks(args.file, args.task), args.data)
    else:
        if args.task:
            raise SolveError(f"--task selects ARC tasks, but this model solves {solver.describe()}")
        if args.file:
            puzzles = read_puzzle_file(args.file, solver)
        else:
            puzzles = [
                Puzzle(f"--puzzle {i}", parse_grid(text, solver, f"--puzzle {i}"), None)
                for i, text in enumerate(args.puzzle, 1)
            ]
        records, scores = solve_grids(solver, puzzles), None
    if args.png:
        draw(args.png, solver, records, args.png_rows)
    if not args.json:
        print_text(solver, records, scores)
    return json_report(solver, records, scores)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Orbax warns through absl about every read-only manager it opens.
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        report = solve(args)
    except (SolveError, ConfigError) as e:
        print(f"solve.py: error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
