"""Short fuzzing runs (a few hundred cases): only BitstackError may escape the parsers and the reader.

The long runs (>= 10,000 cases) are ``python -m benchmarks.reliability.fuzz_parsers``.
"""

import json
import struct
import tempfile
from pathlib import Path

import pytest
from fuzz_cases import (JSON, encode_raw_header, header_from_bytes, manifest_from_dict, manifest_from_json, mutate_artifact,
                        mutate_bytes, mutate_json, only_library_errors, read_everything)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SHORT = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def valid(tiny_artifact):
    path, _, _ = tiny_artifact
    manifest = json.loads((path / "manifest.json").read_text())
    raw = (path / "blocks-00000.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return {"path": path, "manifest": manifest, "shard": raw, "header": json.loads(raw[8 : 8 + length]),
            "data_bytes": len(raw) - 8 - length}


@SHORT
@given(JSON)
def test_manifest_random_json(value):
    only_library_errors(manifest_from_dict, value)
    only_library_errors(manifest_from_json, json.dumps(value))


@SHORT
@given(st.binary(max_size=300))
def test_manifest_random_bytes(raw):
    only_library_errors(manifest_from_json, raw)


def test_manifest_mutations(valid):
    @SHORT
    @given(st.data())
    def check(data):
        mutated = mutate_json(data.draw, valid["manifest"])
        only_library_errors(manifest_from_dict, mutated)
        text = json.dumps(mutated).encode()
        only_library_errors(manifest_from_json, mutate_bytes(data.draw, text) if data.draw(st.booleans()) else text)

    check()


@SHORT
@given(st.binary(max_size=300), st.integers(0, 10**6))
def test_header_random_bytes(raw, size):
    only_library_errors(header_from_bytes, raw, size)
    only_library_errors(header_from_bytes, raw, len(raw))


def test_header_mutations(valid):
    @SHORT
    @given(st.data())
    def check(data):
        header = mutate_json(data.draw, valid["header"])
        blob, size = encode_raw_header(header, valid["data_bytes"], pad=data.draw(st.booleans()))
        only_library_errors(header_from_bytes, blob, size)
        raw = valid["shard"][: len(blob) + 64]
        only_library_errors(header_from_bytes, mutate_bytes(data.draw, raw), len(valid["shard"]))

    check()


def test_reader_on_mutated_artifacts(valid):
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "mutated.bstk"

        @settings(SHORT, max_examples=40)
        @given(st.data())
        def check(data):
            mutate_artifact(data.draw, valid["path"], target)
            only_library_errors(read_everything, target)

        check()
