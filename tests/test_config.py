import dataclasses

import pytest

from bitstack.cli import build_parser, config_from_args
from bitstack.config import CompressConfig
from bitstack.errors import InputError


def test_cli_defaults_are_the_config_defaults():
    args = build_parser().parse_args(["compress", "m", "-o", "out"])
    assert config_from_args(args) == CompressConfig()


def test_every_config_field_has_a_cli_flag():
    help_text = build_parser()._subparsers._group_actions[0].choices["compress"].format_help()
    for f in dataclasses.fields(CompressConfig):
        if f.name != "version":
            assert "--" + f.name.replace("_", "-") in help_text


def test_cli_flags_reach_the_config():
    args = build_parser().parse_args(["compress", "m", "-o", "out", "--niter", "3", "--rank", "5", "--calib", "x.txt"])
    config = config_from_args(args)
    assert (config.niter, config.rank, config.calib) == (3, 5, "x.txt")


def test_config_roundtrip_and_validation():
    config = CompressConfig(niter=4)
    assert CompressConfig.from_dict(config.to_dict()) == config
    with pytest.raises(InputError, match="niter"):
        CompressConfig(niter=0)
    with pytest.raises(InputError, match="dtype"):
        CompressConfig(dtype="int4")
    with pytest.raises(InputError, match="unknown"):
        CompressConfig.from_dict({"bogus": 1})


def test_version_3_settings_read_as_unrotated():
    """Config version 4 added ``rotate``; a version-3 manifest's settings mean "none"."""
    old = {k: v for k, v in CompressConfig().to_dict().items() if k != "rotate"}
    old["version"] = 3
    config = CompressConfig.from_dict(old)
    assert config.rotate == "none" and config.version == 4
    with pytest.raises(InputError, match="rotate must be one of none, hadamard"):
        CompressConfig(rotate="givens")
