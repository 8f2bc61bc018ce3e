import os

import pytest

from dataset.errors import DatasetError
from dataset.manifest import build_atomically, verify_manifest, write_manifest


def _build(files):
    def build(staging):
        for name, text in files.items():
            with open(os.path.join(staging, name), "w") as f:
                f.write(text)
        write_manifest(staging, "test", {"seed": 0})

    return build


def test_manifest_detects_corruption(tmp_path):
    _build({"a.txt": "x"})(str(tmp_path))
    verify_manifest(str(tmp_path))
    with open(tmp_path / "a.txt", "a") as f:
        f.write(" ")
    with pytest.raises(DatasetError, match="a.txt: sha256 differs"):
        verify_manifest(str(tmp_path))


def test_build_atomically_builds_once(tmp_path):
    build_atomically(str(tmp_path / "ds"), _build({"a.txt": "first"}))
    build_atomically(str(tmp_path / "ds"), _build({"a.txt": "second"}))
    assert (tmp_path / "ds" / "a.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no staging copy left behind


def test_build_atomically_leaves_an_incomplete_directory_alone(tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="ds exists but holds no complete dataset .no manifest.json.; move it aside"):
        build_atomically(str(tmp_path / "ds"), _build({"a.txt": "x"}))
    assert [p.name for p in (tmp_path / "ds").iterdir()] == ["notes.txt"]
    assert (tmp_path / "ds" / "notes.txt").read_text() == "mine"


def test_failed_build_leaves_no_staging_directory(tmp_path):
    def fail(staging):
        raise DatasetError("bad source")

    with pytest.raises(DatasetError, match="bad source"):
        build_atomically(str(tmp_path / "ds"), fail)
    assert list(tmp_path.iterdir()) == []
