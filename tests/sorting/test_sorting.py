"""bitstack sort: every strategy on a real (tiny) artifact, the atomic rewrite, resumability."""

import hashlib
import json
import shutil

import pytest
import torch

import bitstack
from bitstack.artifact.reader import ArtifactReader
from bitstack.config import SORT_STRATEGIES, CompressConfig
from bitstack.errors import InputError
from bitstack.sorting import SortSettings, cache_dir, compute_order, sort_artifact
from bitstack.sorting.measure import StackEvaluator
from bitstack.sorting.resort import resort_artifact, resort_dir, stack_order
from bitstack.sorting.strategies import check_head_first, check_order

CONFIG = dict(nsamples=2, seqlen=16, niter=4, rank=2, dtype="float32", batch_size=2, shard_mb=0.02)
_CANDIDATE_LOSS = StackEvaluator.candidate_loss
SETTINGS = SortSettings(val_windows=2, val_seqlen=16, batch_size=2, greedy_step=4, greedy_max_age=8, device="cpu")


def _compress(path, **overrides):
    from tiny_models import tiny_model, tiny_tokenizer

    model = tiny_model("llama", num_hidden_layers=2, hidden_size=32, intermediate_size=64)
    bitstack.compress(model, path, CompressConfig(**{**CONFIG, **overrides}), tokenizer=tiny_tokenizer(), device="cpu",
                      progress=False)
    return path


@pytest.fixture(scope="module")
def small_artifact(tmp_path_factory):
    return _compress(tmp_path_factory.mktemp("sort") / "small.bstk")


@pytest.fixture()
def artifact(small_artifact, tmp_path):
    copy = tmp_path / "a.bstk"
    shutil.copytree(small_artifact, copy)
    return copy


@pytest.fixture(scope="module")
def evaluator(small_artifact):
    return StackEvaluator(small_artifact, device="cpu", batch_size=2)


def _digests(path):
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


def _blocks_by_weight(path, counts=None):
    """{weight: [(u, v, signs), ...]} of the first counts[weight] blocks (all by default)."""
    out = {}
    with ArtifactReader(path) as reader:
        for position, entry in enumerate(reader.manifest.stack):
            block = reader.read_block(position)
            out.setdefault(entry.tensor, []).append((block.u.clone(), block.v.clone(), block.signs.clone()))
    if counts is not None:
        out = {name: blocks[: counts[name]] for name, blocks in out.items()}
    return out


@pytest.mark.parametrize("strategy", SORT_STRATEGIES)
def test_every_strategy_gives_a_valid_order(strategy, small_artifact, evaluator):
    result = compute_order(small_artifact, strategy, SETTINGS, evaluator=evaluator, use_cache=False, progress=False)
    num_blocks = evaluator.num_blocks
    check_order(result.order, num_blocks)
    check_head_first(result.order, num_blocks)
    assert result.info["strategy"] == strategy
    if strategy in ("average", "greedy", "fisher", "leveled"):
        assert result.info["forwards"] > 0
    if strategy == "leveled":  # block i of every weight before any block i + 1
        assert [i for _, i in result.order] == sorted(i for _, i in result.order)


def test_evaluator_matches_load_at_a_budget(small_artifact, evaluator):
    from bitstack.evaluation.perplexity import window_perplexity

    windows = torch.randint(4, 60, (2, 16), generator=torch.Generator().manual_seed(1))
    order = stack_order(evaluator.manifest)
    for blocks in (evaluator.manifest.floor_blocks, 30, len(order)):
        model = bitstack.load(small_artifact, evaluator.prefix_bytes[blocks], device="cpu")
        expected = window_perplexity(model, windows, batch_size=2, progress=False).nll
        evaluator.set_counts(evaluator.counts_at(order, blocks))
        assert evaluator.evaluate(windows) == pytest.approx(expected, rel=1e-6)


def test_resorted_artifact_loads_the_same_blocks(artifact, small_artifact, tmp_path):
    result = sort_artifact(artifact, "random", SortSettings(seed=0), progress=False)
    with ArtifactReader(artifact) as reader:
        manifest = reader.manifest
    assert stack_order(manifest) == result.order
    assert manifest.compression["sort"] == "random" and manifest.compression["sort_info"]["strategy"] == "random"
    fresh = _compress(tmp_path / "fresh.bstk", sort="random")
    with ArtifactReader(fresh) as reader:
        assert [(b.tensor, b.index) for b in reader.manifest.stack] == [(b.tensor, b.index) for b in manifest.stack]
    # at a budget in the middle: the same per-weight block counts, bit-identical blocks
    budget = manifest.prefix_bytes[len(manifest.stack) // 2]
    loaded = {}
    for path in (artifact, fresh):
        model = bitstack.load(path, budget, device="cpu", dtype="float32")
        loaded[path] = {name: list(m.blocks) for name, m in model.bitstack.modules.items()}
    counts = {name: len(blocks) for name, blocks in loaded[artifact].items()}
    assert counts == {name: len(blocks) for name, blocks in loaded[fresh].items()}
    original = _blocks_by_weight(small_artifact, counts)  # the proxy-ordered source, same counts
    for name, blocks in loaded[artifact].items():
        for mine, theirs, source in zip(blocks, loaded[fresh][name], original[name]):
            for a, b, c in zip((mine.u, mine.v, mine.signs), (theirs.u, theirs.v, theirs.signs), source):
                assert torch.equal(a, b) and torch.equal(a, c)


def test_sort_failure_leaves_the_original_intact(artifact, monkeypatch):
    before = _digests(artifact)
    calls = {"n": 0}
    original = ArtifactReader.read_block

    def failing(self, position, device=None):
        calls["n"] += 1
        if calls["n"] == 20:
            raise OSError("disk full (simulated)")
        return original(self, position, device)

    monkeypatch.setattr(ArtifactReader, "read_block", failing)
    with pytest.raises(OSError, match="simulated"):
        sort_artifact(artifact, "random", SortSettings(seed=3), progress=False)
    assert _digests(artifact) == before
    assert not resort_dir(artifact).exists()
    assert not artifact.with_name(artifact.name + ".old").exists()


def test_swap_failure_restores_the_original(artifact, monkeypatch):
    import bitstack.sorting.resort as resort

    before = _digests(artifact)
    real_finish = resort.finish

    def finish_then_fail(path, work, manifest, *, overwrite):
        path.rename(path.with_name(path.name + ".old"))  # the swap's first step, then a crash
        raise OSError("power cut (simulated)")

    monkeypatch.setattr(resort, "finish", finish_then_fail)
    with pytest.raises(OSError, match="simulated"):
        sort_artifact(artifact, "random", SortSettings(seed=3), progress=False)
    assert _digests(artifact) == before and not resort_dir(artifact).exists()
    assert real_finish is not None


def test_resort_rejects_an_order_without_the_head(artifact):
    order = stack_order(ArtifactReader(artifact).manifest)
    order[0], order[-1] = order[-1], order[0]
    with pytest.raises(InputError, match="re-sort"):
        resort_artifact(artifact, order, progress=False)


def _count_candidates(monkeypatch, interrupt_after=None):
    """Count StackEvaluator.candidate_loss calls; raise KeyboardInterrupt after ``interrupt_after``."""
    calls = {"n": 0}

    def counting(self, windows, w):
        calls["n"] += 1
        if interrupt_after is not None and calls["n"] > interrupt_after:
            raise KeyboardInterrupt
        return _CANDIDATE_LOSS(self, windows, w)

    monkeypatch.setattr(StackEvaluator, "candidate_loss", counting)
    return calls


@pytest.mark.parametrize("strategy, stop", [("average", 10), ("greedy", 25)])
def test_measurements_resume_after_an_interruption(strategy, stop, artifact, monkeypatch):
    _count_candidates(monkeypatch, interrupt_after=stop)
    with pytest.raises(KeyboardInterrupt):
        compute_order(artifact, strategy, SETTINGS, progress=False)
    files = list(cache_dir(artifact).glob(f"{strategy}-*.json"))
    assert len(files) == 1
    if strategy == "average":
        assert len(json.loads(files[0].read_text())["data"]["losses"]) == stop
    calls = _count_candidates(monkeypatch)
    resumed = compute_order(artifact, strategy, SETTINGS, progress=False)
    if strategy == "average":  # nothing measured twice
        assert calls["n"] == sum(n - 1 for n in StackEvaluator(artifact, device="cpu").num_blocks) - stop
    fresh = compute_order(artifact, strategy, SETTINGS, use_cache=False, progress=False)
    assert resumed.order == fresh.order


def test_sort_cli(artifact, capsys):
    from bitstack.cli import main

    assert main(["sort", str(artifact), "--strategy", "proxy", "--quiet", "--json", "--device", "cpu"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["strategy"] == "proxy" and info["forwards"] == 0
    assert main(["sort", str(artifact) + "-missing", "--strategy", "proxy", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bitstack: error:") and err.count("\n") == 1


def test_compress_with_a_measured_strategy_resorts_the_result(tmp_path):
    path = _compress(tmp_path / "f.bstk", sort="fisher")
    with ArtifactReader(path) as reader:
        compression = reader.manifest.compression
    assert compression["sort"] == "fisher" and compression["sort_info"]["forwards"] > 0
    assert not resort_dir(path).exists()


def test_proxy_keeps_the_compress_time_order_until_resorted(tmp_path):
    artifact = _compress(tmp_path / "p.bstk", sort="proxy")  # compress-time energies, no re-sort
    from bitstack.artifact.reader import ArtifactReader as Reader

    stored = stack_order(Reader(artifact).manifest)
    result = compute_order(artifact, "proxy", SETTINGS, progress=False)
    assert result.order == stored and result.info["energies"] == "compress-time" and result.info["forwards"] == 0
    sort_artifact(artifact, "proxy", progress=False)  # a no-op re-sort keeps it
    assert compute_order(artifact, "proxy", SETTINGS, progress=False).info["energies"] == "compress-time"
    sort_artifact(artifact, "random", SortSettings(seed=1), progress=False)
    again = compute_order(artifact, "proxy", SETTINGS, progress=False)
    assert again.info["energies"] == "recomputed from the blocks"
    check_order(again.order, [w.num_blocks for w in Reader(artifact).manifest.weights])
