import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from bitstack.remote.testing import ArtifactServer  # noqa: E402
from bitstack.remote.urls import RemoteOptions  # noqa: E402


@pytest.fixture(scope="session")
def served_root(tiny_artifact, tmp_path_factory):
    """A folder served over HTTP: ``tiny.bstk`` (the session's tiny artifact: 5 shards) and
    ``other.bstk`` (the same files under another manifest: a second artifact for the cache)."""
    path, _, _ = tiny_artifact
    root = tmp_path_factory.mktemp("served")
    shutil.copytree(path, root / "tiny.bstk")
    shutil.copytree(path, root / "other.bstk")
    manifest = json.loads((root / "other.bstk" / "manifest.json").read_text())
    manifest["library_version"] += "+other"
    (root / "other.bstk" / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return root


@pytest.fixture
def server(served_root):
    with ArtifactServer(served_root) as running:
        yield running


@pytest.fixture
def options(tmp_path):
    """Remote options for tests: a fresh cache folder, short back-off and timeout."""
    return RemoteOptions(cache_dir=tmp_path / "cache", backoff=0.01, timeout=5.0, connections=3, request_bytes=6000)
