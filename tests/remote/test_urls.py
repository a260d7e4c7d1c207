import pytest

from bitstack.errors import InputError
from bitstack.remote.urls import RemoteOptions, default_cache_dir, is_remote, resolve, with_cache_dir


def test_is_remote():
    assert is_remote("https://example.org/a.bstk") and is_remote("HTTP://x/a") and is_remote("hf://org/repo")
    assert not is_remote("/tmp/a.bstk") and not is_remote("a.bstk") and not is_remote(None)
    from pathlib import Path

    assert not is_remote(Path("https:/x"))  # a Path is always local


@pytest.mark.parametrize("url", ["https://h.org/m/art", "https://h.org/m/art/", "https://h.org/m/art/manifest.json"])
def test_https_names_the_folder(url):
    location = resolve(url, RemoteOptions())
    assert location.base == "https://h.org/m/art/"
    assert location.file_url("tokenizer/tokenizer.json") == "https://h.org/m/art/tokenizer/tokenizer.json"
    assert location.headers == {}


@pytest.mark.parametrize("url, problem", [("https://u:p@h.org/a", "credentials"), ("https://h.org/a?x=1", "query"),
                                          ("https:///a", "no host"), ("hf://org", "hf://ORG/REPO"),
                                          ("hf://org/repo@", "hf://ORG/REPO"), ("hf://org/repo/../x", "'..'")])
def test_malformed_urls_are_refused(url, problem):
    with pytest.raises(InputError, match=problem):
        resolve(url, RemoteOptions())


def test_hf_goes_through_huggingface_hub(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    location = resolve("hf://org/repo@v1.0/sub/dir", RemoteOptions())
    assert location.base == "http://127.0.0.1:9/org/repo/resolve/v1.0/sub/dir/"
    assert location.headers["authorization"] == "Bearer hf_secret"
    assert "hf auth login" in location.hint
    main = resolve("hf://datasets/org/repo", RemoteOptions(token="hf_other"))
    assert main.base == "http://127.0.0.1:9/datasets/org/repo/resolve/main/"
    assert main.headers["authorization"] == "Bearer hf_other"


def test_options(monkeypatch, tmp_path):
    monkeypatch.setenv("BITSTACK_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("BITSTACK_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "bitstack"
    monkeypatch.setenv("BITSTACK_CACHE_LIMIT", "3MB")
    assert RemoteOptions().resolved_cache_limit() == 3_000_000
    assert RemoteOptions(cache_limit="1kB").resolved_cache_limit() == 1000
    assert with_cache_dir(None, None) is None
    assert with_cache_dir(None, tmp_path).cache_dir == tmp_path
    for bad in (dict(connections=0), dict(timeout=0), dict(retries=-1), dict(backoff=float("nan")), dict(cache_limit="x")):
        with pytest.raises(InputError):
            RemoteOptions(**bad).check()
