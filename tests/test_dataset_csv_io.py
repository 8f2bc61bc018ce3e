import numpy as np
import pytest

from dataset.csv_io import chars_to_codes, read_puzzle_csv, write_csv
from dataset.errors import DatasetError

TABLE = np.full(256, -1, np.int16)
TABLE[ord("a") : ord("c") + 1] = [0, 1, 2]


def _csv(tmp_path, text, encoding="utf-8"):
    path = tmp_path / "p.csv"
    path.write_bytes(text.encode(encoding))
    return str(path)


def test_round_trip_keeps_file_line_numbers(tmp_path):
    path = str(tmp_path / "p.csv")
    write_csv(path, ["abc", "cab"], ["bca", "abc"], [3, 0], "gen")
    rows = read_puzzle_csv(path, 3)
    assert (rows.questions, rows.answers, rows.ratings.tolist(), rows.lines.tolist()) == (
        ["abc", "cab"],
        ["bca", "abc"],
        [3, 0],
        [2, 3],
    )
    assert np.array_equal(chars_to_codes(rows.questions, TABLE, csv_file=rows, what="question"), [[0, 1, 2], [2, 0, 1]])


def test_line_numbers_count_blank_lines_and_survive_selection(tmp_path):
    rows = read_puzzle_csv(_csv(tmp_path, "source,question,answer,rating\nx,abc,abc,1\n\nx,abc,abx,2\n"), 3)
    assert rows.lines.tolist() == [2, 4]
    second = rows.select(rows.ratings >= 2)
    with pytest.raises(DatasetError, match="p.csv line 4: invalid character 'x' at position 2 of the answer"):
        chars_to_codes(second.answers, TABLE, csv_file=second, what="answer")


@pytest.mark.parametrize(
    ("text", "encoding", "message"),
    [
        ("\ufeffsource,question,answer,rating\nx,abc,abc,1\n", "utf-8", "UTF-8 byte-order mark .BOM."),
        ("source,question,answer,rating\nx,abc,abc,inf\n", "utf-8", "line 2: rating 'inf' is not a finite number"),
        ("source,question,answer,rating\nx,abc,abc,nan\n", "utf-8", "line 2: rating 'nan' is not a finite number"),
        ("source,question,answer,rating\nx,abc,abc,1\nx,ab\u00e9,abc,1\n", "latin-1", "line 3: byte 46 is not UTF-8"),
        ("source,question,answer,rating\nx,abc,abc,1\nx,ab,abc,1\n", "utf-8", "line 3: expected 4 fields"),
    ],
)
def test_unreadable_rows_name_file_and_line(tmp_path, text, encoding, message):
    with pytest.raises(DatasetError, match=message) as err:
        read_puzzle_csv(_csv(tmp_path, text, encoding), 3)
    assert "p.csv" in str(err.value)


def test_non_ascii_character_names_line_and_position(tmp_path):
    rows = read_puzzle_csv(_csv(tmp_path, "source,question,answer,rating\nx,abc,abc,1\nx,a\u20acc,abc,1\n"), 3)
    with pytest.raises(DatasetError, match="p.csv line 3: invalid character '\u20ac' at position 1 of the question"):
        chars_to_codes(rows.questions, TABLE, csv_file=rows, what="question")
