import pytest

from bitstack.calibration.split import split_passages, write_split
from bitstack.errors import InputError


def test_split_is_by_position_and_disjoint():
    text = "\n\n".join(f"passage {i}" for i in range(10)) + "\n\n\n\n"
    calib, val = split_passages(text, 0.8)
    assert calib.split("\n\n") == [f"passage {i}" for i in range(8)]
    assert val.split("\n\n") == ["passage 8", "passage 9"]


def test_split_refuses_what_cannot_be_split():
    with pytest.raises(InputError, match="between 0 and 1"):
        split_passages("a\n\nb", 1.0)
    with pytest.raises(InputError, match="cannot be split"):
        split_passages("only one passage", 0.5)


def test_write_split(tmp_path):
    source = tmp_path / "text.txt"
    source.write_text("\n\n".join("abcde"), encoding="utf-8")
    calib, val = write_split(source, tmp_path / "out", 0.6)
    assert (calib.name, val.name) == ("text.calib.txt", "text.val.txt")
    assert calib.read_text() == "a\n\nb\n\nc" and val.read_text() == "d\n\ne"
    assert not list((tmp_path / "out").glob("*.tmp"))
    with pytest.raises(InputError, match="does not exist"):
        write_split(tmp_path / "missing.txt", tmp_path)
