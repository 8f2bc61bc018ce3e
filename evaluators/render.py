"""PNG sheets of puzzles: input, prediction and target side by side, wrong cells marked.

Takes token arrays as the datasets store them (one row per puzzle, `[N, seq_len]`):
  sudoku - 0 pad, 1 blank, digit d is token d + 1; the side is sqrt(seq_len) (4x4 and 9x9)
  maze   - tokens 1..5 are "# SGo" (wall, open, start, goal, path) on a square grid
  arc    - 0 pad, 1 EOS, colours 0..9 are tokens 2..11 on a 30x30 canvas; each panel shows
           the grid the official evaluator reads (its top-left crop), in the ARC palette
Labels may hold -100 (ignored positions). The sheet is exactly `sheet_size(rows)` pixels.

    render_sheet("eval.png", kind="sudoku", inputs=x, preds=p, labels=y, captions=["puzzle 3"])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import fsspec
import numpy as np
from matplotlib import patheffects
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from dataset.arc_grids import CANVAS, COLOUR_OFFSET, PAD, crop

KINDS = ("sudoku", "maze", "arc")
DPI = 100
PANEL_PX = 240  # one square panel (input, prediction or target)
CAPTION_PX = 28  # the line above each puzzle's panels
HEADER_PX = 44  # column titles and the legend, once per sheet
MARGIN_PX = 10  # inside each panel, around the grid
COLUMNS = ("input", "prediction", "target")
# The colours of the ARC task viewer, for colours 0..9.
ARC_PALETTE = (
    "#000000",
    "#0074D9",
    "#FF4136",
    "#2ECC40",
    "#FFDC00",
    "#AAAAAA",
    "#F012BE",
    "#FF851B",
    "#7FDBFF",
    "#870C25",
)
MAZE_SYMBOLS = "# SGo"
# Wall, open, start, goal, path; then any token that is not a maze symbol.
MAZE_COLOURS = ("#3a3a3a", "#ffffff", "#2ECC40", "#FFB000", "#1f77d0", "#d62dd6")
MISSING = "#dddddd"  # ARC: a cell the prediction lacks (its grid is smaller than the target)
WRONG = "#e0301e"  # outline of a wrong maze cell
WRONG_FILL = "#ffb3ad"  # background of a wrong Sudoku cell
LEGENDS = {
    "sudoku": "wrong cells in red; blue digits are the model's, black ones the clues",
    "maze": "dark wall, white open, green S, amber G, blue path (o); wrong cells outlined in red",
    "arc": "ARC palette; crossed cells are wrong; grey cells are missing from the prediction",
}


def sheet_size(num_rows: int) -> tuple[int, int]:
    """(width, height) in pixels of a sheet with `num_rows` puzzles."""
    return len(COLUMNS) * PANEL_PX, HEADER_PX + num_rows * (CAPTION_PX + PANEL_PX)


def infer_kind(*, seq_len: int, vocab_size: int) -> str:
    """The puzzle kind of a dataset from its metadata (see the token layouts above)."""
    side = math.isqrt(seq_len)
    square = side * side == seq_len
    if seq_len == CANVAS * CANVAS and vocab_size == COLOUR_OFFSET + 10:
        return "arc"
    # Before the maze test: 4x4 Sudoku also has 6 tokens.
    if square and math.isqrt(side) ** 2 == side and vocab_size == side + 2:
        return "sudoku"
    if square and vocab_size == len(MAZE_SYMBOLS) + 1:
        return "maze"
    raise ValueError(
        f"cannot tell the puzzle kind of seq_len={seq_len}, vocab_size={vocab_size}: "
        f"expected Sudoku (n^4 cells), a maze (square, vocab 6) or ARC (900 cells, vocab 12); pass kind= explicitly"
    )


@dataclass
class _Panel:
    cells: np.ndarray  # [rows, cols] display codes
    text: np.ndarray | None  # [rows, cols] strings (Sudoku digits)
    wrong: np.ndarray | None  # [rows, cols] bool, prediction panel only
    note: str = ""  # said after the verdict in the caption


def _square(tokens: np.ndarray) -> np.ndarray:
    side = math.isqrt(tokens.size)
    return tokens.reshape(side, side)


def _sudoku_panels(inp: np.ndarray, pred: np.ndarray, label: np.ndarray) -> list[_Panel]:
    inp, pred, label = _square(inp), _square(pred), _square(label)
    side = inp.shape[0]
    clue = (inp >= 2) & (inp <= side + 1)

    def digits(tokens, shown):
        valid = (tokens >= 2) & (tokens <= side + 1)
        return np.where(shown & valid, (tokens - 1).astype(str), np.where(shown, "?", ""))

    known = label >= 0
    wrong = known & (pred != label)
    everywhere = np.ones_like(clue)
    # Codes: 0 plain, 1 wrong, 2 a clue, 3 the model's own digit.
    return [
        _Panel(np.where(clue, 2, 0), digits(inp, clue), None),
        _Panel(np.where(wrong, 1, np.where(clue, 2, 3)), digits(pred, everywhere), wrong),
        _Panel(np.where(clue, 2, 3), digits(label, known), None),
    ]


def _maze_panels(inp: np.ndarray, pred: np.ndarray, label: np.ndarray) -> list[_Panel]:
    def codes(tokens):
        tokens = _square(tokens)
        valid = (tokens >= 1) & (tokens <= len(MAZE_SYMBOLS))
        return np.where(valid, tokens - 1, len(MAZE_SYMBOLS))

    wrong = (_square(label) >= 0) & (_square(pred) != _square(label))
    return [_Panel(codes(inp), None, None), _Panel(codes(pred), None, wrong), _Panel(codes(label), None, None)]


def _arc_panels(inp: np.ndarray, pred: np.ndarray, label: np.ndarray) -> list[_Panel]:
    target = crop(np.where(label < 0, PAD, label).astype(np.uint8))
    guess = crop(np.clip(pred, PAD, COLOUR_OFFSET + 9).astype(np.uint8))
    rows, cols = max(target.shape[0], guess.shape[0], 1), max(target.shape[1], guess.shape[1], 1)
    # Codes 0..9 colours, 10 missing; the prediction is laid over the larger of the two grids.
    shown = np.full((rows, cols), 10, np.int64)
    shown[: guess.shape[0], : guess.shape[1]] = guess
    expected = np.full((rows, cols), -1, np.int64)
    expected[: target.shape[0], : target.shape[1]] = target
    wrong = shown != expected
    source = crop(np.asarray(inp).astype(np.uint8))
    note = "" if guess.shape == target.shape else f" (predicted {_dims(guess)}, target {_dims(target)})"
    return [
        _Panel(source if source.size else np.full((1, 1), 10), None, None),
        _Panel(shown, None, wrong, note),
        _Panel(target if target.size else np.full((1, 1), 10), None, None),
    ]


def _dims(grid: np.ndarray) -> str:
    return f"{grid.shape[0]}x{grid.shape[1]}"


_PANELS = {"sudoku": _sudoku_panels, "maze": _maze_panels, "arc": _arc_panels}
_CMAPS = {
    "sudoku": ListedColormap(["#ffffff", WRONG_FILL, "#ffffff", "#ffffff"]),
    "maze": ListedColormap(MAZE_COLOURS),
    "arc": ListedColormap([*ARC_PALETTE, MISSING]),
}
_TEXT_COLOURS = {1: "#a01010", 2: "#000000", 3: "#1f5fbf"}


def _draw_panel(ax, panel: _Panel, kind: str) -> None:
    rows, cols = panel.cells.shape
    ax.imshow(panel.cells, cmap=_CMAPS[kind], vmin=0, vmax=_CMAPS[kind].N - 1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if kind != "maze" or rows <= 12:
        # Cell borders; mazes are drawn without them once the cells get small.
        for x in np.arange(cols + 1) - 0.5:
            ax.axvline(x, color="#888888", lw=0.5)
        for y in np.arange(rows + 1) - 0.5:
            ax.axhline(y, color="#888888", lw=0.5)
    if kind == "sudoku":
        box = math.isqrt(rows)
        for k in range(0, rows + 1, box):
            ax.axvline(k - 0.5, color="black", lw=2)
            ax.axhline(k - 0.5, color="black", lw=2)
        size = 0.55 * (PANEL_PX - 2 * MARGIN_PX) / rows * 72 / DPI
        for (r, c), digit in np.ndenumerate(panel.text):
            if digit:
                code = int(panel.cells[r, c])
                weight = "bold" if code == 2 else "normal"
                ax.text(c, r, digit, ha="center", va="center", fontsize=size, color=_TEXT_COLOURS[code], weight=weight)
    elif panel.wrong is not None:
        _mark_wrong(ax, panel.wrong, kind)


def _mark_wrong(ax, wrong: np.ndarray, kind: str) -> None:
    rs, cs = np.nonzero(wrong)
    if kind == "maze":
        for r, c in zip(rs, cs, strict=True):
            ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor=WRONG, lw=2))
        return
    # A white cross with a black rim reads on every ARC colour.
    halo = [patheffects.withStroke(linewidth=3, foreground="black")]
    for r, c in zip(rs, cs, strict=True):
        for dy in (-0.3, 0.3):
            ax.plot([c - 0.3, c + 0.3], [r - dy, r + dy], color="white", lw=1.5, path_effects=halo)


def _check_inputs(kind: str, arrays: dict[str, np.ndarray], captions) -> int:
    if kind not in KINDS:
        raise ValueError(f"unknown puzzle kind {kind!r}; expected one of {KINDS}")
    shapes = {name: a.shape for name, a in arrays.items()}
    if len(set(shapes.values())) != 1 or arrays["inputs"].ndim != 2 or not len(arrays["inputs"]):
        raise ValueError(f"inputs, preds and labels must be equal non-empty [N, seq_len] arrays, got {shapes}")
    seq_len = arrays["inputs"].shape[1]
    side = math.isqrt(seq_len)
    fits = {"arc": seq_len == CANVAS * CANVAS, "maze": side * side == seq_len}
    fits["sudoku"] = fits["maze"] and math.isqrt(side) ** 2 == side
    if not fits[kind]:
        raise ValueError(f"seq_len={seq_len} is not a {kind} grid (Sudoku: n^4 cells, maze: square, ARC: 900)")
    if captions is not None and len(captions) != len(arrays["inputs"]):
        raise ValueError(f"{len(captions)} captions for {len(arrays['inputs'])} puzzles")
    return len(arrays["inputs"])


def _caption(index: int, wrong: np.ndarray, extra: str | None, shape_note: str, *, has_target: bool) -> str:
    verdict = "correct" if not wrong.any() else f"{int(wrong.sum())} wrong cell{'s' * (int(wrong.sum()) != 1)}"
    # Without any known target cell nothing can be called correct.
    verdict = verdict if has_target else "no target"
    return "  ".join(part for part in (f"#{index}", extra, verdict + shape_note) if part)


def render_sheet(
    out: str,
    *,
    kind: str,
    inputs: np.ndarray,
    preds: np.ndarray,
    labels: np.ndarray,
    captions: Sequence[str] | None = None,
    max_puzzles: int = 8,
) -> str:
    """Draw the first `max_puzzles` puzzles, one per row, to the PNG `out` (a local path or an
    fsspec URL such as gs://...); returns `out`."""
    arrays = {name: np.asarray(a) for name, a in (("inputs", inputs), ("preds", preds), ("labels", labels))}
    n = min(_check_inputs(kind, arrays, captions), max_puzzles)
    width, height = sheet_size(n)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    for col, title in enumerate(COLUMNS):
        fig.text((col + 0.5) / len(COLUMNS), 1 - 14 / height, title, ha="center", va="center", fontsize=11)
    fig.text(0.5, 1 - 34 / height, LEGENDS[kind], ha="center", va="center", fontsize=7, color="#444444")
    for i in range(n):
        panels = _PANELS[kind](arrays["inputs"][i], arrays["preds"][i], arrays["labels"][i])
        top = HEADER_PX + i * (CAPTION_PX + PANEL_PX)
        extra = captions[i] if captions is not None else None
        text = _caption(i, panels[1].wrong, extra, panels[1].note, has_target=bool((arrays["labels"][i] >= 0).any()))
        fig.text(8 / width, 1 - (top + CAPTION_PX / 2) / height, text, ha="left", va="center", fontsize=9)
        for col, panel in enumerate(panels):
            box = PANEL_PX - 2 * MARGIN_PX
            left = (col * PANEL_PX + MARGIN_PX) / width
            bottom = 1 - (top + CAPTION_PX + MARGIN_PX + box) / height
            ax = fig.add_axes((left, bottom, box / width, box / height))
            _draw_panel(ax, panel, kind)
    with fsspec.open(out, "wb") as f:
        fig.savefig(f, format="png", dpi=DPI)
    return out
