import numpy as np
import pytest

from dataset.transforms import dihedral_transform, inverse_dihedral_transform


@pytest.mark.parametrize("tid", range(8))
def test_dihedral_inverse_round_trip(tid):
    grid = np.arange(12).reshape(3, 4)
    assert np.array_equal(inverse_dihedral_transform(dihedral_transform(grid, tid), tid), grid)


def test_dihedral_transforms_are_distinct():
    grid = np.arange(9).reshape(3, 3)
    assert len({dihedral_transform(grid, t).tobytes() for t in range(8)}) == 8
