"""The 8 symmetries of the square (dihedral group), applied to the last two axes of a grid."""

from __future__ import annotations

import numpy as np

# Numbered as in the official code so augmentation names match; DIHEDRAL_INVERSE[t] undoes t.
DIHEDRAL_INVERSE = (0, 3, 2, 1, 4, 5, 6, 7)
_DIHEDRAL = (
    lambda a: a,
    lambda a: np.rot90(a, 1, axes=(-2, -1)),
    lambda a: np.rot90(a, 2, axes=(-2, -1)),
    lambda a: np.rot90(a, 3, axes=(-2, -1)),
    lambda a: np.flip(a, -1),
    lambda a: np.flip(a, -2),
    lambda a: np.swapaxes(a, -2, -1),
    lambda a: np.flip(np.rot90(a, 1, axes=(-2, -1)), -1),
)


def dihedral_transform(grid: np.ndarray, tid: int) -> np.ndarray:
    """Apply symmetry `tid` (0..7) to the last two axes of `grid`."""
    return _DIHEDRAL[tid](grid)


def inverse_dihedral_transform(grid: np.ndarray, tid: int) -> np.ndarray:
    return dihedral_transform(grid, DIHEDRAL_INVERSE[tid])
