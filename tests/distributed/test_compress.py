"""Decompositions spread over two gloo processes: the artifact's bytes are a one-process run's."""

import pytest

from dist_workers import fixture_results, needs_gloo
from bitstack.distributed.compress import assign
from bitstack.errors import InputError


@pytest.fixture(scope="module")
def gloo_run(tmp_path_factory, tiny_artifact, tiny_avd_artifact):
    return fixture_results(tmp_path_factory, tiny_artifact, tiny_avd_artifact)


def test_assign_longest_first_to_least_loaded():
    assert assign([5, 1, 4, 4, 2], 2) == [0, 0, 1, 1, 0]  # 5→0, 4→1, 4→1 (4 < 5), 2→0, 1→0 (ties: lowest rank)
    assert assign([3, 3, 3], 1) == [0, 0, 0]
    assert assign([], 4) == []
    owner = assign([7, 7, 7, 7], 4)
    assert sorted(owner) == [0, 1, 2, 3]
    with pytest.raises(InputError):
        assign([1], 0)


@needs_gloo
@pytest.mark.parametrize("codec", ["planes", "avd"])
def test_parallel_artifact_identical_bytes(gloo_run, codec):
    assert gloo_run[0][f"compress/{codec}"] is True


@needs_gloo
def test_worker_rank_decomposed_its_share(gloo_run):
    # the tiny Llama's q, k, v, o, gate, up, down (hidden 48, 2 kv heads of 12, mlp 96), 2 layers
    sizes = [48 * 48, 24 * 48, 24 * 48, 48 * 48, 96 * 48, 96 * 48, 48 * 96]
    assert gloo_run[1]["compress/worker_weights"] == 2 * assign(sizes, 2).count(1) > 0


@needs_gloo
def test_rank0_error_reaches_every_rank(gloo_run):
    for rank in range(2):
        kind, message, ours = gloo_run[rank]["compress/error"]
        assert ours and kind == "InputError" and "already exists" in message and "\n" not in message
