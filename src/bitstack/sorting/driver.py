"""``bitstack sort``: compute a universal order for an existing artifact and rewrite it.

Strategies (:data:`bitstack.config.SORT_STRATEGIES`):

- ``proxy``: activation-scaled residual energy per byte (:mod:`bitstack.sorting.strategies`).  The
  order ``compress`` wrote is kept (it used the exact energies); on an artifact re-sorted since,
  the energies are recomputed from the blocks with the full stack standing in for the original
  weight (:func:`is_compress_time_proxy`).  No forward pass.
- ``fisher``: the diagonal empirical Fisher F of the validation loss with respect to every
  decomposed weight (one forward + backward per validation window at the full stack) weights
  the residual energies: E_w[i] = Σ F_w ⊙ (Ŵ_w,n − Ŵ_w,i)² ≈ 2 × the loss increase when weight w
  stops after i blocks (second-order Taylor expansion around the full stack).  Blocks are merged
  by E_w[i] − E_w[i+1] per byte.
- ``average`` (the paper's): level by level; within level i the weights are ranked by the
  validation loss measured with every weight at i blocks except that one at i + 1.
  Cost: one full forward per level plus one partial forward per block.
- ``greedy``: batched lazy greedy on measured loss reduction per byte
  (:class:`bitstack.sorting.strategies.GreedySorter`).
- ``random``: a seeded ablation.

Measurements of ``average`` and ``greedy`` go to ``<artifact>.sortcache/<strategy>-<key>.json``
(key: a hash of the blocks, the validation tokens and the settings), written atomically every
few seconds; a rerun skips what is done.  Re-sorting the artifact does not invalidate them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from bitstack.artifact.atomic import atomic_write_bytes
from bitstack.artifact.opening import open_artifact
from bitstack.calibration.samples import calibration_samples, check_source
from bitstack.codecs.base import setting
from bitstack.config import SORT_STRATEGIES
from bitstack.errors import InputError, StorageError, storage_error
from bitstack.runtime.loader import load_tokenizer
from bitstack.sorting.measure import StackEvaluator
from bitstack.sorting.resort import resort_artifact, stack_order
from bitstack.sorting.strategies import (GreedySorter, WeightStats, level_order, random_order, residual_energies,
                                         universal_order)

NEEDS_MODEL = ("fisher", "leveled", "average", "greedy")


@dataclass
class SortSettings:
    """Settings of the measured strategies (``fisher``, ``average``, ``greedy``).

    val: validation text: a text file, ``"self"`` (text sampled from the full-stack model, the
        fallback) or a Hugging Face dataset id — calibration-style text, not the test set.
    val_windows, val_seqlen: how many windows of how many tokens (seeded by ``seed``).
    batch_size: windows per forward pass.
    greedy_step, greedy_max_age: see :class:`~bitstack.sorting.strategies.GreedySorter`.
    seed: validation windows and the ``random`` strategy.
    """

    val: str = setting("self", "validation text for fisher/average/greedy: a text file, or 'self' (sampled from the model)")
    val_windows: int = setting(4, "validation windows")
    val_seqlen: int = setting(256, "tokens per validation window")
    batch_size: int = setting(4, "windows per forward pass")
    greedy_step: int = setting(8, "greedy: blocks accepted per round")
    greedy_max_age: int = setting(256, "greedy: re-measure a gain older than this many blocks")
    seed: int = setting(0, "seed of the validation windows and of random")
    device: str | None = setting(None, "cpu, cuda … (default: cuda if available)", type=str)
    dtype: str | None = setting(None, "compute dtype (default: the artifact's)", type=str,
                                choices=("bfloat16", "float16", "float32"))

    def __post_init__(self) -> None:
        for name in ("val_windows", "val_seqlen", "batch_size", "greedy_step"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        if self.val_seqlen < 2:
            raise InputError(f"val_seqlen must be at least 2, got {self.val_seqlen}")
        if self.greedy_max_age < 0:
            raise InputError(f"greedy_max_age must be >= 0, got {self.greedy_max_age}")


@dataclass
class SortResult:
    """An order plus what it cost: ``info`` is recorded in the manifest as ``sort_info``."""

    order: list[tuple[int, int]]
    info: dict[str, Any] = field(default_factory=dict)


def is_compress_time_proxy(manifest) -> bool:
    """Whether the artifact's stack is still the order ``compress`` wrote with ``sort=proxy``.

    Only then are the exact residual energies of the decomposition behind it; once re-sorted,
    ``proxy`` recomputes them from the blocks with the full stack standing in for the original
    weight (:func:`~bitstack.sorting.strategies.residual_energies`), which moves late blocks: the
    drops E[i] − E[i+1] of the last blocks are of the order of the final residual E[n] that the
    approximation sets to 0.
    """
    compression = manifest.compression
    info = compression.get("sort_info")
    return compression.get("sort") == "proxy" and (info is None or info.get("energies") == "compress-time")


def cache_dir(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".sortcache")


def _check_strategy(strategy: str) -> None:
    if strategy not in SORT_STRATEGIES:
        raise InputError(f"unknown sort strategy {strategy!r}: choose one of {', '.join(SORT_STRATEGIES)}")


def _blocks_fingerprint(manifest) -> str:
    """Identity of the artifact's blocks, independent of their order."""
    digest = hashlib.sha256()
    for entry in sorted(manifest.stack, key=lambda b: (b.tensor, b.index)):
        fields = {k: v for k, v in dataclasses.asdict(entry).items() if k not in ("shard", "offset")}
        digest.update(json.dumps(fields, sort_keys=True).encode())
    return digest.hexdigest()


class _Progress:
    """A JSON file of measurements, saved atomically at most every ``every`` seconds."""

    def __init__(self, file: Path | None, key: dict[str, Any], cost, every: float = 10.0):
        self.file = file
        self.start = (cost.seconds, cost.forwards, cost.equivalents)  # the evaluator's cost so far
        self.key = key
        self.every = every
        self.data: dict[str, Any] = {}
        self.seconds = 0.0  # measurement time of earlier runs
        self.forwards = 0
        self.equivalents = 0.0
        self._saved_at = time.monotonic()
        if file is not None and file.is_file():
            try:
                saved = json.loads(file.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                saved = None  # unreadable: start over (it is only a cache)
            if isinstance(saved, dict) and saved.get("key") == key:
                self.data = saved.get("data", {})
                self.seconds = float(saved.get("seconds", 0.0))
                self.forwards = int(saved.get("forwards", 0))
                self.equivalents = float(saved.get("forward_equivalents", 0.0))

    def save(self, cost, *, force: bool = False) -> None:
        if self.file is None or (not force and time.monotonic() - self._saved_at < self.every):
            return
        self.file.parent.mkdir(exist_ok=True)
        body = {"key": self.key, "data": self.data,
                "seconds": round(self.seconds + cost.seconds - self.start[0], 2),
                "forwards": self.forwards + cost.forwards - self.start[1],
                "forward_equivalents": round(self.equivalents + cost.equivalents - self.start[2], 3)}
        atomic_write_bytes(self.file, json.dumps(body).encode("utf-8"))
        self._saved_at = time.monotonic()


def validation_windows(evaluator, settings: SortSettings) -> torch.Tensor:
    """int64 (val_windows, val_seqlen) token windows of the validation text.

    A file or dataset gives seeded random windows (seed + 1, so that they differ from the
    calibration windows of the same seed); ``"self"`` samples text from the full-stack model.
    """
    check_source(settings.val)
    tokenizer = load_tokenizer(evaluator.path)
    evaluator.set_counts(evaluator.num_blocks)
    return calibration_samples(settings.val, evaluator.model, tokenizer, settings.val_windows, settings.val_seqlen,
                               settings.seed + 1, batch_size=settings.batch_size, progress=False)


def energy_stats(evaluator, importance: list[torch.Tensor] | None = None, progress: bool = True) -> list[WeightStats]:
    """Residual energies of every weight from its blocks (see :func:`residual_energies`)."""
    stats = []
    for w, module in enumerate(tqdm(evaluator.modules, desc="residual energies", unit="weight", disable=not progress)):
        dense = [module.contribution(i) for i in range(len(module.blocks))]
        energies = residual_energies(dense, None if importance is None else importance[w])
        stats.append(WeightStats(tuple(energies), module.blocks[0].nbytes))
    return stats


def fisher_diagonal(evaluator, windows: torch.Tensor, progress: bool = True) -> list[torch.Tensor]:
    """Diagonal empirical Fisher of the mean token NLL w.r.t. every decomposed weight.

    At the full stack; one forward + backward per window (per-window gradients, squared and
    averaged).  Returns float32 (out, in) per weight, in manifest order.
    """
    evaluator.set_counts(evaluator.num_blocks)
    params = []
    for module in evaluator.modules:
        module.weight = module.acc.to(evaluator.dtype, copy=True).requires_grad_(True)
        params.append(module.weight)
    fisher = [torch.zeros(p.shape, dtype=torch.float32, device=p.device) for p in params]
    began = time.perf_counter()
    try:
        with torch.enable_grad():
            for row in tqdm(windows, desc="fisher", unit="window", disable=not progress):
                batch = row[None].to(evaluator.device)
                logits = evaluator.model(input_ids=batch, use_cache=False).logits
                loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
                grads = torch.autograd.grad(loss, params)
                for acc, g in zip(fisher, grads):
                    acc += g.float().square()
    finally:
        for module in evaluator.modules:
            module.weight = module.acc.to(evaluator.dtype)
    evaluator.cost.forwards += len(windows)
    evaluator.cost.equivalents += 3.0 * len(windows) / windows.shape[0]  # forward + backward ≈ 3 forwards
    evaluator.cost.seconds += time.perf_counter() - began
    return [f / windows.shape[0] for f in fisher]


def measure_average(evaluator, windows: torch.Tensor, progress: _Progress, *, show: bool = True) -> dict[tuple[int, int], float]:
    """Validation loss of every block (w, i >= 1) with all weights at i blocks but w at i + 1."""
    done: dict[str, float] = progress.data.setdefault("losses", {})
    num_blocks = evaluator.num_blocks
    total = sum(max(n - 1, 0) for n in num_blocks)
    bar = tqdm(total=total, initial=len(done), desc="average: measuring blocks", unit="block", disable=not show)
    try:
        for level in range(1, max(num_blocks)):
            todo = [w for w, n in enumerate(num_blocks) if n > level and f"{w},{level}" not in done]
            if not todo:
                continue
            evaluator.set_counts([min(level, n) for n in num_blocks])
            evaluator.refresh(windows)
            progress.data.setdefault("level_loss", {})[str(level)] = evaluator.loss
            for w in todo:
                done[f"{w},{level}"] = evaluator.candidate_loss(windows, w)
                bar.update(1)
                progress.save(evaluator.cost)
    finally:  # also on an interruption: keep what was measured
        bar.close()
        progress.save(evaluator.cost, force=True)
    return {tuple(int(x) for x in key.split(",")): loss for key, loss in done.items()}


def measure_greedy(evaluator, windows: torch.Tensor, progress: _Progress, settings: SortSettings, *, show: bool = True) -> list[tuple[int, int]]:
    """Run :class:`GreedySorter` with losses measured by ``evaluator``; resumable."""
    sorter = GreedySorter(list(evaluator.num_blocks), list(evaluator.block_bytes),
                          step=settings.greedy_step, max_age=settings.greedy_max_age)
    if "state" in progress.data:
        sorter.restore(progress.data["state"])
    evaluator.set_counts(sorter.counts)
    evaluator.refresh(windows)
    total = sum(evaluator.num_blocks)
    bar = tqdm(total=total, initial=sorter.accepted, desc="greedy: placing blocks", unit="block", disable=not show)
    measurements = int(progress.data.get("measurements", 0))
    try:
        while True:
            action, weights = sorter.next_action()
            if action == "done":
                break
            if action == "measure":
                current = evaluator.loss
                gains = {}
                for w in weights:  # recorded only once all are measured: a round is atomic
                    gains[w] = (current - evaluator.candidate_loss(windows, w)) / evaluator.block_bytes[w]
                sorter.record(gains)
                measurements += len(weights)
            else:
                sorter.accept(weights)
                evaluator.set_counts(sorter.counts)
                evaluator.refresh(windows, from_layer=min(evaluator.layer_of[w] for w in weights))
                bar.update(len(weights))
            progress.data["state"] = sorter.to_dict()
            progress.data["measurements"] = measurements
            progress.save(evaluator.cost)
    finally:  # also on an interruption: keep what was decided
        bar.close()
        progress.save(evaluator.cost, force=True)
    return sorter.order


def compute_order(path: str | Path, strategy: str, settings: SortSettings | None = None, *, evaluator=None,
                  windows: torch.Tensor | None = None, use_cache: bool = True, progress: bool = True) -> SortResult:
    """The universal order of ``strategy`` for the artifact at ``path`` (nothing is written but
    the measurement cache).

    ``evaluator`` (a :class:`~bitstack.sorting.measure.StackEvaluator` of ``path``) and
    ``windows`` may be passed to share them between strategies; ``use_cache=False`` neither reads
    nor writes ``<artifact>.sortcache``.
    """
    _check_strategy(strategy)
    settings = settings or SortSettings()
    began = time.perf_counter()
    if strategy in ("random", "proxy"):
        with open_artifact(path, verify=False) as reader:
            manifest = reader.manifest
        info: dict[str, Any] = {"strategy": strategy, "forwards": 0, "forward_equivalents": 0}
        if strategy == "random":
            order = random_order([w.num_blocks for w in manifest.weights], settings.seed)
            info["seed"] = settings.seed
        elif is_compress_time_proxy(manifest):  # exact energies were used: keep that order
            order = stack_order(manifest)
            info["energies"] = "compress-time"
        else:
            order = None
        if order is not None:
            info["seconds"] = round(time.perf_counter() - began, 2)
            return SortResult(order, info)
    if evaluator is None:
        evaluator = StackEvaluator(path, device=settings.device, dtype=settings.dtype, batch_size=settings.batch_size)
    start = (evaluator.cost.forwards, evaluator.cost.equivalents)
    earlier = (0.0, 0, 0.0)  # seconds, forwards, equivalents of earlier (interrupted) runs
    info: dict[str, Any] = {"strategy": strategy}
    if strategy in NEEDS_MODEL:
        if windows is None:
            windows = validation_windows(evaluator, settings)
        info.update(val=settings.val, val_windows=int(windows.shape[0]), val_seqlen=int(windows.shape[1]),
                    dtype=str(evaluator.dtype).replace("torch.", ""))
    if strategy == "proxy":  # the artifact was re-sorted: approximate energies from the blocks
        order = universal_order(energy_stats(evaluator, progress=progress), "proxy")
        info["energies"] = "recomputed from the blocks"
    elif strategy in ("fisher", "leveled"):
        fisher = fisher_diagonal(evaluator, windows, progress=progress)
        order = universal_order(energy_stats(evaluator, fisher, progress=progress), strategy)
    else:
        key = {"strategy": strategy, "blocks": _blocks_fingerprint(evaluator.manifest),
               "tokens": hashlib.sha256(windows.numpy().tobytes()).hexdigest(), "dtype": str(evaluator.dtype)}
        if strategy == "greedy":
            key.update(step=settings.greedy_step, max_age=settings.greedy_max_age)
        file = None
        if use_cache:
            name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
            file = cache_dir(evaluator.path) / f"{strategy}-{name}.json"
        record = _Progress(file, key, evaluator.cost)
        earlier = (record.seconds, record.forwards, record.equivalents)
        if strategy == "average":
            order = level_order(evaluator.num_blocks, measure_average(evaluator, windows, record, show=progress))
        else:
            order = measure_greedy(evaluator, windows, record, settings, show=progress)
            info.update(step=settings.greedy_step, max_age=settings.greedy_max_age,
                        measurements=int(record.data.get("measurements", 0)))
        if file is not None:
            info["cache"] = str(file)
    info["forwards"] = earlier[1] + evaluator.cost.forwards - start[0]
    info["forward_equivalents"] = round(earlier[2] + evaluator.cost.equivalents - start[1], 2)
    info["seconds"] = round(earlier[0] + time.perf_counter() - began, 1)
    return SortResult(order, info)


def sort_artifact(path: str | Path, strategy: str, settings: SortSettings | None = None, *,
                  shard_mb: float | None = None, use_cache: bool = True, progress: bool = True,
                  dest: str | Path | None = None) -> SortResult:
    """Compute ``strategy``'s order for the artifact at ``path`` and rewrite it atomically (into
    the new folder ``dest`` instead, when given, leaving ``path`` as it is)."""
    try:
        result = compute_order(path, strategy, settings, use_cache=use_cache, progress=progress)
        resort_artifact(path, result.order, sort_info=result.info, shard_mb=shard_mb, progress=progress, dest=dest)
    except StorageError:
        raise
    except OSError as err:  # a full or read-only disk: the original is intact, measurements stay cached
        raise storage_error(err, "sort stopped", "rerun the same command: the measurements done so far are kept") from err
    return result
