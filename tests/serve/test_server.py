import json

import pytest

from bitstack.errors import InputError
from bitstack.serve.server import _floor_and_full, load_curve


def _manifest(folder, dtype="bfloat16"):
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"prefix_bytes": [100, 130, 160, 200], "base_bytes": 100,
                                                      "floor_blocks": 2, "compression": {"dtype": dtype}}))
    return folder


def test_floor_and_full_widen_the_base_for_a_wider_dtype(tmp_path):
    art = _manifest(tmp_path / "a.bstk")
    assert _floor_and_full(art, None) == (160, 200)
    assert _floor_and_full(art, "bfloat16") == (160, 200)
    assert _floor_and_full(art, "float32") == (260, 300)  # every base byte may double: an upper bound
    assert _floor_and_full(_manifest(tmp_path / "b.bstk", "float32"), "float16") == (160, 200)
    with pytest.raises(InputError, match="not a bitstack artifact"):
        _floor_and_full(tmp_path / "missing", None)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{")
    with pytest.raises(InputError, match="unreadable"):
        _floor_and_full(tmp_path / "bad", None)


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
