import pytest

from bitstack.errors import InputError
from bitstack.memory import format_bytes, parse_memory


@pytest.mark.parametrize("text,expected", [
    ("120MB", 120_000_000), ("1.5GiB", 1_610_612_736), ("123456", 123456), (123456, 123456),
    ("300 kB", 300_000), ("2KiB", 2048), ("1e3", 1000), ("0.5 mb", 500_000), ("7B", 7),
])
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("bad", ["-5MB", "abc", "12 parsecs", "", "nanMB", float("inf"), -1, True, None, "1.2.3GB"])
def test_parse_memory_rejects_nonsense(bad):
    with pytest.raises(InputError):
        parse_memory(bad)


def test_format_bytes():
    assert format_bytes(123_456_789) == "123.46 MB"
    assert format_bytes(12) == "12 B"
