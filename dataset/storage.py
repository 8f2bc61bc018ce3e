"""Reading dataset and source files from local disk or any fsspec URL (gs://...)."""

from __future__ import annotations

from dataset.errors import DatasetError, MissingFileError


def read_text(path: str) -> str:
    """The UTF-8 text of a local or remote (gs://, any fsspec URL) file."""
    import fsspec

    try:
        with fsspec.open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as e:
        raise MissingFileError(f"{path}: file not found; check the path or build the dataset first") from e
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DatasetError(
            f"{path} line {line}: byte {e.start} is not UTF-8 text; re-save the file as UTF-8 (or plain ASCII)"
        ) from None
