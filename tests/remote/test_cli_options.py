"""The artifact argument: one place turns a URL and the remote options into what load() takes."""

from pathlib import Path

import pytest
import torch
from remote_util import manifest_of

import bitstack
from bitstack.cli import build_parser
from bitstack.remote.urls import RemoteOptions, RemoteURL, options_for

URL = "https://example.org/models/tiny.bstk"


@pytest.mark.parametrize("command", ["info", "eval", "generate", "chat", "curve"])
def test_every_artifact_command_takes_a_url_with_its_options(command, tmp_path):
    extra = {"eval": [], "generate": ["--prompt", "x"], "chat": [], "info": [], "curve": ["--ppl", "t.txt"]}[command]
    cache = str(tmp_path / "c")
    for argv in ([command, URL, "--cache-dir", cache, "--timeout", "7", "--offline", *extra],
                 [command, "--offline", "--timeout", "7", "--cache-dir", cache, URL, *extra]):  # either order
        args = build_parser().parse_args(argv)
        assert isinstance(args.artifact, RemoteURL) and args.artifact == URL
        assert args.artifact.options == RemoteOptions(cache_dir=cache, timeout=7.0, offline=True)


def test_a_local_folder_stays_as_given_and_defaults_are_the_apis():
    args = build_parser().parse_args(["info", "some/folder.bstk"])
    assert args.artifact == "some/folder.bstk" and not isinstance(args.artifact, RemoteURL)
    args = build_parser().parse_args(["info", URL])
    assert args.artifact.options == RemoteOptions()  # the CLI's defaults are load()'s defaults


def test_explicit_options_win_over_carried_ones(tmp_path):
    carried = RemoteURL(URL, RemoteOptions(timeout=3.0))
    assert options_for(carried, None).timeout == 3.0
    assert options_for(carried, RemoteOptions(timeout=9.0)).timeout == 9.0
    assert options_for(URL, None) == RemoteOptions()


def test_the_cli_location_loads_as_the_python_api_does(served_root, server, options, tmp_path):
    """bitstack.load(args.artifact) with the parsed location equals bitstack.load(url, remote=...)."""
    url = f"{server.url}/tiny.bstk"
    m = manifest_of(served_root / "tiny.bstk")
    budget = m.prefix_bytes[m.floor_blocks + 7]
    cli_cache = tmp_path / "cli-cache"
    args = build_parser().parse_args(["eval", url, "--cache-dir", str(cli_cache), "--memory", str(budget), "--ppl", "x"])
    from_cli = bitstack.load(args.artifact, args.memory, device="cpu")
    from_api = bitstack.load(url, budget, device="cpu", remote=options)
    assert from_cli.bitstack.loaded == from_api.bitstack.loaded == m.floor_blocks + 7
    assert bitstack.memory_bytes(from_cli) == bitstack.memory_bytes(from_api)
    assert Path(from_cli.bitstack.reader.path).is_relative_to(cli_cache)  # the CLI's cache folder was used
    assert Path(from_api.bitstack.reader.path).is_relative_to(Path(options.cache_dir))
    ids = torch.tensor([[1, 5, 9, 2]])
    with torch.no_grad():
        assert torch.equal(from_cli(ids).logits, from_api(ids).logits)
    from_cli.bitstack.reader.close()
    from_api.bitstack.reader.close()
