"""What each gloo process of tests/distributed runs, started once per session by :func:`results`.

Every scenario runs on every rank; each rank records its observations in a dict saved to
``<tmp>/rank<r>.pt``, which the tests read.  An error expected on every rank is recorded as
(type name, message); collectives have a timeout, so a hang becomes an error.  (No conftest.py
here: a second ``conftest`` module would shadow the top one for ``from conftest import``.)
"""

from __future__ import annotations

import datetime
import functools
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

GLOO = dist.is_available() and dist.is_gloo_available()
needs_gloo = pytest.mark.skipif(not GLOO, reason="torch.distributed with the gloo backend is not available")


@functools.lru_cache(maxsize=None)
def results(folder: str, planes: str, avd: str) -> dict[int, dict]:
    """{rank: what it saw} of two gloo processes running every scenario below on the artifacts
    ``planes`` and ``avd``, in ``folder``; computed once per session (the tests' fixtures call it)."""
    import torch.multiprocessing as mp

    # fork: the processes start with this one's imports (transformers is most of a process's start)
    mp.start_processes(run, args=(2, folder, {"planes": planes, "avd": avd}), nprocs=2, join=True, start_method="fork")
    seen = {rank: torch.load(Path(folder) / f"rank{rank}.pt", weights_only=False) for rank in range(2)}
    for rank, found in seen.items():
        assert "crash" not in found, f"rank {rank} crashed:\n{found['crash']}"
    return seen


def fixture_results(tmp_path_factory, tiny_artifact, tiny_avd_artifact) -> dict[int, dict]:
    """:func:`results` for the session's tiny artifacts (skips without gloo)."""
    if not GLOO:
        pytest.skip("torch.distributed with the gloo backend is not available")
    folder = tmp_path_factory.getbasetemp() / "gloo"
    folder.mkdir(exist_ok=True)
    return results(str(folder), str(tiny_artifact[0]), str(tiny_avd_artifact[0]))


class _Reference:
    """The whole model in one process, whose weights can be cut to any block counts."""

    def __init__(self, path):
        import bitstack
        from bitstack.runtime.linear import BitStackLinear

        self.model = bitstack.load(path)
        self.modules = {n: m for n, m in self.model.named_modules() if isinstance(m, BitStackLinear)}
        self.full = {n: list(m.blocks) for n, m in self.modules.items()}

    def logits(self, counts: dict[str, int], ids: torch.Tensor) -> torch.Tensor:
        """Logits with each weight holding ``counts`` blocks."""
        for name, module in self.modules.items():
            module.blocks = self.full[name][: counts[name]]
            module.blocks_changed()
        with torch.no_grad():
            return self.model(input_ids=ids, use_cache=False).logits


def _counts(stage) -> dict[str, int]:
    gathered: list = [None] * stage.shard.world
    dist.all_gather_object(gathered, stage.block_counts())
    return {k: v for part in gathered for k, v in part.items()}


def _error(fn):
    try:
        fn()
    except Exception as err:  # the type and message are what the tests check
        return type(err).__name__, str(err), isinstance(err, __import__("bitstack").BitstackError)
    return None


def _pipeline(rank: int, path: str, out: dict, key: str, budgets_too: bool) -> None:
    import bitstack
    from bitstack.artifact.opening import open_artifact
    from bitstack.distributed.pipeline import load_pipeline
    from bitstack.distributed.shard import LayerShard, model_names, part_manifest
    from bitstack.runtime.loader import _build_skeleton

    ids = torch.randint(0, 64, (2, 11), generator=torch.Generator().manual_seed(1))
    reference = _Reference(path)
    stage = load_pipeline(path, [None, None])
    logits = stage.logits(ids)
    counts = _counts(stage)
    out[f"{key}/full"] = dict(equal=torch.equal(logits, reference.logits(counts, ids)),
                             resident=stage.resident_bytes, measured=bitstack.memory_bytes(stage.model),
                             layers=(stage.shard.layers.start, stage.shard.layers.stop))
    greedy = reference.model.generate(ids[:, :4], max_new_tokens=6, min_new_tokens=6, do_sample=False)
    out[f"{key}/generate"] = dict(cached=torch.equal(stage.generate(ids[:, :4], 6), greedy),
                                  uncached=torch.equal(stage.generate(ids[:, :4], 6, use_cache=False), greedy))
    if not budgets_too:
        return

    # budgets between each part's floor and full size
    with open_artifact(path, verify=False) as reader:
        manifest = reader.manifest
    decoder, embed, head, layers = model_names(_build_skeleton(manifest))
    parts = [part_manifest(manifest, LayerShard(r, 2, stage.plan.layers[r], layers, decoder, embed, head))[0]
             for r in range(2)]

    def between(part, fraction: float) -> int:
        return int(part.floor_bytes + fraction * (part.full_bytes - part.floor_bytes))

    budgets = [between(parts[0], 0.4), between(parts[1], 0.7)]
    stage = load_pipeline(path, budgets)
    part = parts[rank]
    fits = bitstack.memory_bytes(stage.model) <= budgets[rank]
    longest = stage.stack.loaded == len(part.stack) or part.prefix_bytes[stage.stack.loaded + 1] > budgets[rank]
    counts = _counts(stage)
    out[f"{key}/budget"] = dict(fits=fits, longest=longest, equal=torch.equal(stage.logits(ids), reference.logits(counts, ids)),
                               partial=0 < stage.stack.loaded - part.floor_blocks < len(part.stack) - part.floor_blocks)

    swapped = [between(parts[0], 0.9), between(parts[1], 0.2)]
    reports = stage.resize(swapped)
    counts = _counts(stage)
    out[f"{key}/resize"] = dict(fits=bitstack.memory_bytes(stage.model) <= swapped[rank],
                                reports=[(r.old_blocks, r.new_blocks) for r in reports],
                                loaded=stage.stack.loaded,
                                equal=torch.equal(stage.logits(ids), reference.logits(counts, ids)))
    before = stage.block_counts()
    out[f"{key}/below_floor"] = _error(lambda: stage.resize([swapped[0], parts[1].floor_bytes - 1]))
    out[f"{key}/unchanged"] = stage.block_counts() == before
    out[f"{key}/mismatch"] = _error(lambda: stage.resize([swapped[0], swapped[1] + rank]))
    out[f"{key}/after_errors"] = torch.equal(stage.logits(ids), reference.logits(_counts(stage), ids))


def _bad_specs(path: str, out: dict) -> None:
    from bitstack.distributed.pipeline import load_pipeline

    out["bad/world"] = _error(lambda: load_pipeline(path, [None, None, None]))
    out["bad/layers"] = _error(lambda: load_pipeline(path, [None, None], layers=[3, 0]))
    out["bad/differ"] = _error(lambda: load_pipeline(path, [None, None], layers=[1, 2] if dist.get_rank() else [2, 1]))
    out["bad/floor"] = _error(lambda: load_pipeline(path, ["1KB", None]))


def _compression(rank: int, tmp: Path, out: dict) -> None:
    from tiny_models import tiny_model, tiny_tokenizer

    import bitstack
    from bitstack.config import CompressConfig
    from bitstack.distributed.compress import DecompositionPool, compress_parallel, serve

    def same(a: Path, b: Path) -> bool:
        files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
        return files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) and all(
            (a / f).read_bytes() == (b / f).read_bytes() for f in files)

    for codec, extra in (("planes", dict(group_size=16)), ("avd", dict(codec="avd", rank=4))):
        config = CompressConfig(nsamples=4, seqlen=32, niter=5, dtype="float32", batch_size=2, shard_mb=0.01, **extra)
        reference, parallel = tmp / f"ref-{codec}", tmp / f"par-{codec}"
        if rank == 0:
            bitstack.compress(tiny_model("llama", num_hidden_layers=2), reference, config, tokenizer=tiny_tokenizer(),
                              device="cpu", progress=False)
        if codec == "planes":
            compress_parallel(tiny_model("llama", num_hidden_layers=2) if rank == 0 else None, parallel, config,
                              tokenizer=tiny_tokenizer() if rank == 0 else None, device="cpu", progress=False)
        elif rank == 0:  # the pieces compress_parallel is made of, to count the workers' share
            pool = DecompositionPool()
            try:
                bitstack.compress(tiny_model("llama", num_hidden_layers=2), parallel, config, tokenizer=tiny_tokenizer(),
                                  device="cpu", progress=False, decompose=pool)
            finally:
                pool.close()
        else:
            out["compress/worker_weights"] = serve("cpu")
        dist.barrier()
        if rank == 0:
            out[f"compress/{codec}"] = same(reference, parallel)
    out["compress/error"] = _error(lambda: compress_parallel(
        tiny_model("llama", num_hidden_layers=2) if rank == 0 else None, tmp / "par-planes", None,
        tokenizer=tiny_tokenizer() if rank == 0 else None, device="cpu", progress=False))


def run(rank: int, world: int, tmp: str, artifacts: dict[str, str]) -> None:
    """One rank: every scenario, then save what it saw."""
    torch.set_num_threads(1)  # the same arithmetic in every process (and a quiet machine)
    tests = str(Path(__file__).resolve().parent.parent)
    if tests not in sys.path:
        sys.path.insert(0, tests)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))
    out: dict = {"seconds": {}}
    try:
        for key, path in artifacts.items():  # the first: every scenario; the others: logits and decoding
            started = time.perf_counter()
            _pipeline(rank, path, out, key, budgets_too=key == next(iter(artifacts)))
            out["seconds"][key] = time.perf_counter() - started
        started = time.perf_counter()
        _bad_specs(artifacts["planes"], out)
        out["seconds"]["bad"] = time.perf_counter() - started
        started = time.perf_counter()
        _compression(rank, Path(tmp), out)
        out["seconds"]["compress"] = time.perf_counter() - started
    except Exception:
        out["crash"] = traceback.format_exc()
    finally:
        torch.save(out, Path(tmp) / f"rank{rank}.pt")
        dist.destroy_process_group()
