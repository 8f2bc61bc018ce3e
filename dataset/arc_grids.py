"""ARC grid <-> token sequence conversion and invertible augmentations (shared by builder and evaluator).

A grid is placed on a 30x30 canvas: 0 = pad, 1 = EOS, 2..11 = colours 0..9. EOS marks the row
below and the column right of the grid, so the evaluator can crop a prediction back to a grid.
"""

from __future__ import annotations

import hashlib

import numpy as np

from dataset.errors import DatasetError
from dataset.transforms import dihedral_transform, inverse_dihedral_transform

CANVAS = 30
PAD, EOS, COLOUR_OFFSET = 0, 1, 2
SEPARATOR = "|||"  # official augmentation-name separator: "<task>|||t<dihedral>|||<colour map digits>"


def grid_to_np(grid: object, where: str = "grid") -> np.ndarray:
    """A JSON grid (list of equal-length rows of integer colours 0..9, at most 30x30) as uint8."""
    expected = f"expected 1..{CANVAS} rows of 1..{CANVAS} integer colours 0..9"
    if not isinstance(grid, list) or not all(isinstance(row, list) for row in grid):
        raise DatasetError(f"{where}: {expected}, got {type(grid).__name__} {_abbrev(grid)}")
    widths = sorted({len(row) for row in grid})
    if len(widths) > 1:
        raise DatasetError(f"{where}: rows of different lengths {widths} (a ragged grid); {expected}")
    for r, row in enumerate(grid):
        for c, cell in enumerate(row):
            if type(cell) is not int or not 0 <= cell <= 9:  # bool and float are not colours
                raise DatasetError(f"{where}: cell {cell!r} at row {r}, column {c}; {expected}")
    arr = np.asarray(grid, np.uint8).reshape(len(grid), widths[0] if widths else 0)
    if not (0 < arr.shape[0] <= CANVAS and 0 < arr.shape[1] <= CANVAS):
        raise DatasetError(f"{where}: shape {arr.shape}; {expected}")
    return arr


def _abbrev(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def grid_hash(grid: np.ndarray) -> str:
    return hashlib.sha256(bytes(grid.shape) + np.ascontiguousarray(grid, np.uint8).tobytes()).hexdigest()


def examples_hash(examples: list[tuple[np.ndarray, np.ndarray]]) -> str:
    """Order-independent hash of a puzzle version, used to de-duplicate augmentations."""
    pairs = sorted(f"{grid_hash(i)}|{grid_hash(o)}" for i, o in examples)
    return hashlib.sha256("|".join(pairs).encode()).hexdigest()


def to_sequences(inp: np.ndarray, out: np.ndarray, offset: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Both grids at the same canvas offset, EOS-bordered, flattened to [900]."""
    return tuple(_place(grid, offset) for grid in (inp, out))


def _place(grid: np.ndarray, offset: tuple[int, int]) -> np.ndarray:
    r0, c0 = offset
    rows, cols = grid.shape
    canvas = np.full((CANVAS, CANVAS), PAD, np.uint8)
    canvas[r0 : r0 + rows, c0 : c0 + cols] = grid + COLOUR_OFFSET
    if r0 + rows < CANVAS:
        canvas[r0 + rows, c0 : c0 + cols] = EOS
    if c0 + cols < CANVAS:
        canvas[r0 : r0 + rows, c0 + cols] = EOS
    return canvas.reshape(-1)


def random_offset(rng: np.random.Generator, inp: np.ndarray, out: np.ndarray) -> tuple[int, int]:
    rows = max(inp.shape[0], out.shape[0])
    cols = max(inp.shape[1], out.shape[1])
    return int(rng.integers(0, CANVAS - rows + 1)), int(rng.integers(0, CANVAS - cols + 1))


def crop(sequence: np.ndarray) -> np.ndarray:
    """Largest top-left rectangle of colour tokens (the official cropping rule), as colours 0..9."""
    canvas = np.asarray(sequence).reshape(CANVAS, CANVAS)
    colour = (canvas >= COLOUR_OFFSET) & (canvas < COLOUR_OFFSET + 10)
    leading = np.where(colour.all(axis=1), CANVAS, np.argmin(colour, axis=1))
    widths = np.minimum.accumulate(leading)
    areas = widths * np.arange(1, CANVAS + 1)
    rows = int(np.argmax(areas)) + 1 if areas.max() > 0 else 0
    return (canvas[:rows, : widths[rows - 1] if rows else 0] - COLOUR_OFFSET).astype(np.uint8)


def augmentation_name(task: str, tid: int, colours: np.ndarray) -> str:
    return f"{task}{SEPARATOR}t{tid}{SEPARATOR}{''.join(map(str, colours))}"


def augment(grid: np.ndarray, tid: int, colours: np.ndarray) -> np.ndarray:
    return dihedral_transform(colours[grid], tid)


def parse_augmentation(name: str) -> tuple[str, callable]:
    """(original task name, function mapping an augmented grid back to the original frame)."""
    if SEPARATOR not in name:
        return name, lambda grid: grid
    task, tid, colours = name.split(SEPARATOR)
    inverse_colours = np.argsort(np.array(list(colours), dtype=np.uint8)).astype(np.uint8)
    return task, lambda grid: inverse_colours[inverse_dihedral_transform(grid, int(tid[1:]))]
