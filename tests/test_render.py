"""evaluators/render.py: PNG sheets of input / prediction / target with wrong cells marked."""

from __future__ import annotations

import fsspec
import matplotlib.image
import numpy as np
import pytest
from matplotlib.colors import to_rgb

from dataset.arc_grids import to_sequences
from dataset.sudoku import solved_base_grid
from evaluators.render import (
    ARC_PALETTE,
    CAPTION_PX,
    HEADER_PX,
    MARGIN_PX,
    MAZE_COLOURS,
    PANEL_PX,
    WRONG,
    WRONG_FILL,
    infer_kind,
    render_sheet,
    sheet_size,
)
from models.losses import IGNORE_LABEL_ID


def _sudoku(n: int, count: int, blanks: int, seed: int = 0):
    """(inputs, labels) tokens as the builders write them: digit d -> d + 1, blank -> 1."""
    rng = np.random.default_rng(seed)
    relabel = [np.concatenate([[0], rng.permutation(n * n) + 1]) for _ in range(count)]
    solved = np.stack([perm[solved_base_grid(n).reshape(-1)] for perm in relabel])
    questions = solved.copy()
    for q in questions:
        q[rng.choice(q.size, blanks, replace=False)] = 0
    return questions + 1, solved + 1


def _maze():
    """A 30x30 maze: walls around, an open corridor on row 1 from S to G, the answer's path on it."""
    grid = np.full((30, 30), "#")
    grid[1, 1:29] = " "
    grid[1, 1], grid[1, 28] = "S", "G"
    answer = grid.copy()
    answer[1, 2:28] = "o"
    encode = np.vectorize("# SGo".index)
    return encode(grid).reshape(1, -1) + 1, encode(answer).reshape(1, -1) + 1


def _pixel(png: np.ndarray, *, row: int, panel: int, r: int, c: int, side: int, at: float = 0.25) -> np.ndarray:
    """RGB at fraction `at` of the way into cell (r, c) of a square side x side grid from its
    top-left corner: by default away from a digit in its centre and from the border lines."""
    cell = (PANEL_PX - 2 * MARGIN_PX) / side
    top = HEADER_PX + row * (CAPTION_PX + PANEL_PX) + CAPTION_PX + MARGIN_PX
    y = int(top + (r + at) * cell)
    x = int(panel * PANEL_PX + MARGIN_PX + (c + at) * cell)
    return png[y, x, :3]


def _ink(png: np.ndarray, **where) -> int:
    """Dark pixels in the middle third of a cell, where a digit is drawn."""
    cell = (PANEL_PX - 2 * MARGIN_PX) / where["side"]
    centre = [_pixel(png, **where, at=0.5 + d / cell) for d in range(-3, 4)]
    return sum(int(rgb.min() < 0.6) for rgb in centre)


def _close(rgb, colour: str) -> bool:
    return bool(np.allclose(rgb, to_rgb(colour), atol=0.02))


def _png(path) -> np.ndarray:
    data = matplotlib.image.imread(path)
    assert data.ndim == 3 and data.shape[2] in (3, 4)
    return data


def test_sudoku_sheet_has_the_documented_size_and_marks_exactly_the_wrong_cells(tmp_path):
    inputs, labels = _sudoku(3, count=3, blanks=40)
    preds = labels.copy()
    blank = int(np.flatnonzero(inputs[0] == 1)[0])
    preds[0, blank] = 2 + (labels[0, blank] - 1) % 9  # another digit
    out = render_sheet(str(tmp_path / "s.png"), kind="sudoku", inputs=inputs, preds=preds, labels=labels)
    png = _png(out)
    assert (tmp_path / "s.png").stat().st_size > 1000
    assert png.shape[1::-1] == sheet_size(3) == (3 * PANEL_PX, HEADER_PX + 3 * (CAPTION_PX + PANEL_PX))
    r, c = divmod(blank, 9)
    other = (r, (c + 1) % 9)
    assert _close(_pixel(png, row=0, panel=1, r=r, c=c, side=9), WRONG_FILL)
    assert _close(_pixel(png, row=0, panel=1, r=other[0], c=other[1], side=9), "#ffffff")
    # Blanks (token 1) are drawn empty, clues and answers with a digit in the cell's middle.
    clue = divmod(int(np.flatnonzero(inputs[0] > 1)[0]), 9)
    assert _ink(png, row=0, panel=0, r=r, c=c, side=9) == 0
    assert _ink(png, row=0, panel=0, r=clue[0], c=clue[1], side=9) > 0
    assert _ink(png, row=0, panel=2, r=r, c=c, side=9) > 0
    # The same cell is plain in the target panel and in the next, correct, puzzle.
    assert _close(_pixel(png, row=0, panel=2, r=r, c=c, side=9), "#ffffff")
    assert _close(_pixel(png, row=1, panel=1, r=r, c=c, side=9), "#ffffff")


def test_at_most_max_puzzles_rows_are_drawn(tmp_path):
    inputs, labels = _sudoku(2, count=5, blanks=6)
    render_sheet(str(tmp_path / "s.png"), kind="sudoku", inputs=inputs, preds=labels, labels=labels, max_puzzles=2)
    assert _png(tmp_path / "s.png").shape[1::-1] == sheet_size(2)


def test_maze_cells_take_their_symbol_colours_and_wrong_cells_differ(tmp_path):
    inputs, labels = _maze()
    preds = labels.copy()
    preds[0, 30 + 10] = 2  # a path cell predicted open
    render_sheet(str(tmp_path / "m.png"), kind="maze", inputs=inputs, preds=preds, labels=labels)
    png = _png(tmp_path / "m.png")
    assert png.shape[1::-1] == sheet_size(1)
    wall, open_, start, goal, path = MAZE_COLOURS[:5]
    centre = dict(row=0, side=30, at=0.5)
    assert _close(_pixel(png, panel=0, r=0, c=0, **centre), wall)
    assert _close(_pixel(png, panel=0, r=1, c=1, **centre), start)
    assert _close(_pixel(png, panel=0, r=1, c=28, **centre), goal)
    assert _close(_pixel(png, panel=0, r=1, c=5, **centre), open_)
    assert _close(_pixel(png, panel=2, r=1, c=5, **centre), path)
    assert _close(_pixel(png, panel=1, r=1, c=5, **centre), path)
    # The wrong cell shows what was predicted, inside an outline in the wrong-cell colour.
    assert _close(_pixel(png, panel=1, r=1, c=10, **centre), open_)
    edge = dict(row=0, panel=1, side=30, at=0.1)
    assert _close(_pixel(png, r=1, c=10, **edge), WRONG)
    assert _close(_pixel(png, r=1, c=5, **edge), path)


def test_arc_grids_are_cropped_and_drawn_in_the_arc_palette(tmp_path):
    source = np.arange(9, dtype=np.uint8).reshape(3, 3)
    target = (source + 1) % 10
    inputs, labels = (x.astype(np.int64)[None] for x in to_sequences(source, target, (0, 0)))
    labels = np.where(labels == 0, IGNORE_LABEL_ID, labels)
    preds = np.where(labels == IGNORE_LABEL_ID, 5, labels)  # whatever the model says outside the grid is ignored
    preds[0, 4] = 2 + 7  # cell (1, 1) should be colour 5
    render_sheet(str(tmp_path / "a.png"), kind="arc", inputs=inputs, preds=preds, labels=labels)
    png = _png(tmp_path / "a.png")
    for r in range(3):
        for c in range(3):
            assert _close(_pixel(png, row=0, panel=0, r=r, c=c, side=3), ARC_PALETTE[source[r, c]])
            assert _close(_pixel(png, row=0, panel=2, r=r, c=c, side=3), ARC_PALETTE[target[r, c]])
    assert _close(_pixel(png, row=0, panel=1, r=0, c=0, side=3), ARC_PALETTE[target[0, 0]])


def test_sheets_can_be_written_to_gcs(gcs_emulator):
    inputs, labels = _sudoku(2, count=1, blanks=6)
    url = f"gs://{gcs_emulator['bucket']}/render/s.png"
    render_sheet(url, kind="sudoku", inputs=inputs, preds=labels, labels=labels)
    with fsspec.open(url, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "seq_len, vocab_size, kind",
    [(16, 6, "sudoku"), (81, 11, "sudoku"), (900, 6, "maze"), (900, 12, "arc")],
)
def test_kind_is_inferred_from_the_dataset_metadata(seq_len, vocab_size, kind):
    assert infer_kind(seq_len=seq_len, vocab_size=vocab_size) == kind


def test_unknown_layouts_are_refused():
    with pytest.raises(ValueError, match="seq_len=100, vocab_size=7"):
        infer_kind(seq_len=100, vocab_size=7)


@pytest.mark.parametrize(
    "kind, shapes, captions, message",
    [
        ("go", [(1, 16)] * 3, None, "unknown puzzle kind 'go'"),
        ("sudoku", [(1, 16), (1, 16), (2, 16)], None, "equal non-empty"),
        ("sudoku", [(1, 20)] * 3, None, "seq_len=20 is not a sudoku grid"),
        ("arc", [(1, 81)] * 3, None, "seq_len=81 is not a arc grid"),
        ("sudoku", [(2, 16)] * 3, ["one"], "1 captions for 2 puzzles"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(tmp_path, kind, shapes, captions, message):
    arrays = [np.ones(s, np.int64) for s in shapes]
    with pytest.raises(ValueError, match=message):
        render_sheet(
            str(tmp_path / "x.png"), kind=kind, inputs=arrays[0], preds=arrays[1], labels=arrays[2], captions=captions
        )
    assert not (tmp_path / "x.png").exists()
