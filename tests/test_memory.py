import pytest

from bitstack.errors import InputError
from bitstack.memory import BitsPerParam, format_bytes, format_sizes, parse_budget, parse_memory


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


@pytest.mark.parametrize("text,bits", [("3.5bits", 3.5), ("2 bits/param", 2.0), ("1bit", 1.0), ("4.25bpp", 4.25),
                                       ("0 BITS", 0.0)])
def test_parse_budget_takes_bits_per_parameter(text, bits):
    assert parse_budget(text) == BitsPerParam(bits)
    assert BitsPerParam(bits).to_bytes(1000, 800) == 1000 + int(bits * 100)
    with pytest.raises(InputError, match="bits per parameter"):
        parse_memory(text)  # a plain size (a reserve, a hysteresis) is bytes


def test_parse_budget_takes_sizes_as_parse_memory_does():
    assert parse_budget("120MB") == parse_memory("120MB") == 120_000_000
    for bad in ("-3bits", "nan bits", "3 bitz"):
        with pytest.raises(InputError):
            parse_budget(bad)


def test_format_sizes_prints_bytes_when_rounding_hides_a_difference():
    assert format_sizes(73_593_471, 73_593_472) == ["73593471 bytes", "73593472 bytes"]
    assert format_sizes(73_593_471, 120_000_000) == ["73.59 MB", "120.00 MB"]
    assert format_sizes(5, 5) == ["5 B", "5 B"]
