"""Property-based fuzzing of everything that parses artifact bytes (used by tests and benchmarks).

Targets: :meth:`Manifest.from_json` / :meth:`Manifest.from_dict`, the safetensors header parser
:func:`parse_header`, and :class:`ArtifactReader` (open, base weights, every block, tokenizer)
on a mutated copy of a real artifact.  The property is the same everywhere: the target either
succeeds or raises a :class:`bitstack.BitstackError`; any other exception is a bug.

Inputs are random JSON, random bytes, and mutations of valid inputs (a value replaced, a key
dropped or added, a number nudged, a list cut or repeated; bytes flipped, cut or inserted; files
of the artifact deleted, truncated, extended, replaced by a folder), so that most cases get past
the first checks.
"""

from __future__ import annotations

import collections
import copy
import json
import shutil
import struct
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from bitstack.artifact.manifest import Manifest
from bitstack.artifact.reader import ArtifactReader
from bitstack.artifact.safetensors_io import parse_header
from bitstack.errors import BitstackError

# ---- strategies ------------------------------------------------------------------------------
SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2**63, 2**64 - 1, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["F32", "F16", "U8", "param", "buffer", "bitstack", "..", "/etc/passwd", "a\x00b", ""]),
)
JSON = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys / indices) into a JSON value, the root included."""
    out = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value[:6]):  # enough positions, bounded cost
            out += _paths(item, prefix + (index,))
    return out


def _get(value: Any, path: tuple) -> Any:
    for key in path:
        value = value[key]
    return value


def mutate_json(draw, value: Any, rounds: int = 3) -> Any:
    """A copy of ``value`` with 1..``rounds`` structural mutations at random places."""
    value = copy.deepcopy(value)
    for _ in range(draw(st.integers(1, rounds))):
        paths = _paths(value)
        path = draw(st.sampled_from(paths))
        target = _get(value, path)
        action = draw(st.sampled_from(["replace", "drop", "add", "nudge", "cut", "repeat", "retype"]))
        if not path:
            if action == "replace":
                value = draw(JSON)
            continue
        parent, key = _get(value, path[:-1]), path[-1]
        if action == "replace":
            parent[key] = draw(JSON)
        elif action == "drop":
            del parent[key]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=10))] = draw(JSON)
        elif action == "add":
            parent.insert(key, draw(JSON))
        elif action == "nudge" and type(target) is int:
            parent[key] = target + draw(st.sampled_from([-1, 1, -target - 1, 2**40, 7]))
        elif action == "nudge" and isinstance(target, str):
            parent[key] = target[: draw(st.integers(0, max(len(target) - 1, 0)))] + draw(st.text(max_size=3))
        elif action == "cut" and isinstance(target, (list, dict)) and target:
            keep = draw(st.integers(0, len(target) - 1))
            parent[key] = target[:keep] if isinstance(target, list) else dict(list(target.items())[:keep])
        elif action == "repeat" and isinstance(target, list) and target:
            parent[key] = target + target[: draw(st.integers(1, len(target)))]
        elif action == "retype":
            parent[key] = draw(st.sampled_from([str(target), [target], {"v": target}, None, True, 1.5]))
    return value


def mutate_bytes(draw, raw: bytes, rounds: int = 3) -> bytes:
    """``raw`` with 1..``rounds`` byte flips, cuts, insertions or truncations."""
    data = bytearray(raw)
    for _ in range(draw(st.integers(1, rounds))):
        action = draw(st.sampled_from(["flip", "cut", "insert", "truncate", "set"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if action == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif action == "cut":
            del data[at : at + draw(st.integers(1, 16))]
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif action == "truncate":
            del data[at:]
        elif action == "set" and data:
            data[at] = draw(st.sampled_from(list(b'{}[]",:0 9-e.\\\xff\x00')))
    return bytes(data)


# ---- targets ---------------------------------------------------------------------------------
OUTCOMES: collections.Counter = collections.Counter()  # (target, "ok" | error type) -> cases


def only_library_errors(call, *args) -> bool:
    """Run ``call``; True if it succeeded, False if it raised a BitstackError (anything else escapes)."""
    try:
        call(*args)
    except BitstackError as err:
        OUTCOMES[(call.__name__, type(err).__name__)] += 1
        return False
    OUTCOMES[(call.__name__, "ok")] += 1
    return True


def manifest_from_json(raw: bytes | str) -> None:
    Manifest.from_json(raw)


def manifest_from_dict(data: Any) -> None:
    Manifest.from_dict(data)


def header_from_bytes(raw: bytes, file_size: int) -> None:
    parse_header(raw, file_size, what="fuzzed.safetensors")


def encode_raw_header(header: Any, data_bytes: int, pad: bool = True) -> tuple[bytes, int]:
    """A safetensors prefix for ``header`` (any JSON), and the file size with ``data_bytes``."""
    raw = json.dumps(header).encode()
    if pad:
        raw += b" " * (-len(raw) % 8)
    blob = struct.pack("<Q", len(raw)) + raw
    return blob, len(blob) + data_bytes


def read_everything(path: Path) -> None:
    """Open an artifact and read every part of it, as :func:`bitstack.load` would."""
    with ArtifactReader(path, verify=True) as reader:
        reader.read_base()
        for position in range(len(reader.manifest.stack)):
            reader.read_block(position)
        if hasattr(reader, "read_blocks"):
            reader.read_blocks(0, len(reader.manifest.stack))
        reader.load_tokenizer()


def mutate_artifact(draw, source: Path, target: Path) -> list[str]:
    """Copy the artifact ``source`` to ``target`` and damage 1-3 of its files; return what was done."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    files = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
    done = []
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(files))
        file = target / name
        action = draw(st.sampled_from(["bytes", "bytes", "json", "delete", "truncate", "append", "folder"]))
        if not file.is_file():
            continue
        if action == "json" and name.endswith(".json"):
            try:
                value = json.loads(file.read_bytes())
            except ValueError:
                continue
            file.write_text(json.dumps(mutate_json(draw, value)))
        elif action in ("bytes", "json"):
            raw = file.read_bytes()
            if name.endswith(".safetensors") and len(raw) > 8 and draw(st.booleans()):
                # aim at the header, where the parser does its work
                (length,) = struct.unpack("<Q", raw[:8])
                head = raw[: 8 + min(length, len(raw) - 8)]
                raw = mutate_bytes(draw, head) + raw[len(head):]
            else:
                raw = mutate_bytes(draw, raw)
            file.write_bytes(raw)
        elif action == "delete":
            file.unlink()
        elif action == "truncate":
            size = file.stat().st_size
            with open(file, "r+b") as handle:
                handle.truncate(draw(st.integers(0, max(size - 1, 0))))
        elif action == "append":
            with open(file, "ab") as handle:
                handle.write(draw(st.binary(min_size=1, max_size=64)))
        elif action == "folder":
            file.unlink()
            file.mkdir()
        done.append(f"{action} {name}")
    if draw(st.booleans()):  # a consistent forgery: the checksums match the damaged files
        _resign(target)
        done.append("resign")
    return done


def _resign(target: Path) -> None:
    """Rewrite the manifest's sha256 of the base and tokenizer files to match their bytes."""
    import hashlib

    try:
        manifest = json.loads((target / "manifest.json").read_bytes())
        base = manifest["base"]
        base["sha256"] = hashlib.sha256((target / base["file"]).read_bytes()).hexdigest()
        folder = target / manifest["tokenizer"]["dir"]
        for name in manifest["tokenizer"]["files"]:
            manifest["tokenizer"]["files"][name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return
    (target / "manifest.json").write_text(json.dumps(manifest))
