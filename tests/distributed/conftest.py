import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))

GLOO = dist.is_available() and dist.is_gloo_available()
needs_gloo = pytest.mark.skipif(not GLOO, reason="torch.distributed with the gloo backend is not available")


@pytest.fixture(scope="session")
def gloo_run(tmp_path_factory, tiny_artifact, tiny_avd_artifact):
    """Two gloo processes running every scenario of dist_workers.py: {rank: what it saw}."""
    if not GLOO:
        pytest.skip("torch.distributed with the gloo backend is not available")
    import torch.multiprocessing as mp

    import dist_workers

    tmp = tmp_path_factory.mktemp("gloo")
    artifacts = {"planes": str(tiny_artifact[0]), "avd": str(tiny_avd_artifact[0])}
    mp.spawn(dist_workers.run, args=(2, str(tmp), artifacts), nprocs=2, join=True)
    results = {rank: torch.load(tmp / f"rank{rank}.pt", weights_only=False) for rank in range(2)}
    for rank, seen in results.items():
        assert "crash" not in seen, f"rank {rank} crashed:\n{seen['crash']}"
    return results
