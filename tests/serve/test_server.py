import json

import pytest

from bitstack.artifact.manifest import Manifest
from bitstack.errors import BitstackError, InputError
from bitstack.remote.testing import ArtifactServer
from bitstack.remote.urls import RemoteOptions, RemoteURL
from bitstack.serve.options import ServeOptions
from bitstack.serve.server import _floor_and_full, build, load_curve, widened


def test_floor_and_full_widen_the_base_for_a_wider_dtype(serve_artifact, tmp_path):
    assert widened(160, 200, 100, "bfloat16", None) == (160, 200)
    assert widened(160, 200, 100, "bfloat16", "bfloat16") == (160, 200)
    assert widened(160, 200, 100, "bfloat16", "float32") == (260, 300)  # every base byte may double: an upper bound
    assert widened(160, 200, 100, "float32", "float16") == (160, 200)
    m = Manifest.from_json((serve_artifact / "manifest.json").read_text())
    assert _floor_and_full(serve_artifact, None) == (m.floor_bytes, m.full_bytes)
    with pytest.raises(InputError, match="does not exist"):
        _floor_and_full(tmp_path / "missing", None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a bitstack artifact"):
        _floor_and_full(tmp_path / "empty", None)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{")
    with pytest.raises(BitstackError):
        _floor_and_full(tmp_path / "bad", None)


def test_a_served_url_is_the_artifact(serve_artifact, tmp_path):
    """An artifact on a web server (started here, 127.0.0.1): its floor and full size, and a
    server built from its URL that names the model after the URL's last part."""
    with ArtifactServer(serve_artifact.parent) as web:
        url = RemoteURL(f"{web.url}/{serve_artifact.name}", RemoteOptions(cache_dir=tmp_path / "cache", timeout=5.0))
        assert _floor_and_full(url, None) == _floor_and_full(serve_artifact, None)
        server = build(url, ServeOptions(memory="1GB", device="cpu"))
        try:
            assert server.model_name == serve_artifact.name
            assert server.engine.weights.stack is not None
        finally:
            server.close()


def test_load_curve_takes_the_main_series(tmp_path):
    assert load_curve(tmp_path / "none.json") is None
    path = tmp_path / "a-curve.json"
    path.write_text(json.dumps({"series": {"main": [{"memory_bytes": 1, "ppl": 9.0, "bits_per_param": 2.0, "nll": 2.2}],
                                           "other": [{"memory_bytes": 2, "ppl": 8.0, "bits_per_param": 3.0}]}}))
    curve = load_curve(path)
    assert curve == {"label": "main", "points": [{"bits_per_param": 2.0, "memory_bytes": 1, "ppl": 9.0}], "source": str(path)}
    path.write_text(json.dumps({"series": {}}))
    with pytest.raises(InputError, match="is not a 'bitstack curve' JSON file"):
        load_curve(path)
