"""Shared steps of the quality scripts (``tune``, ``seeded_table``): settings, compression,
evaluation at memory budgets, and running jobs as parallel processes.

Every job is one process (``python -m benchmarks.quality.<script> --job SPEC ...``) that writes
one JSON file; the driver starts up to ``--jobs`` of them at a time (on one GPU the compressions
are launch-bound, so several processes overlap well), then reads the files.  A job whose file
exists is not run again, so an interrupted run resumes.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

TASKS = ("arc_easy", "arc_challenge", "piqa", "winogrande", "lambada_openai")
# llmcompressor's memories of SmolLM2-135M at w2/w3/w4 g64 and w4 g32 (benchmarks/quality/gptq.py's rule)
MEMORIES = {"w2g64": 86968064, "w3g64": 100446464, "w4g64": 113924864, "w4g32": 118071424}
BASELINES = {"w4g64": (4, 64), "w3g64": (3, 64), "w2g64": (2, 64), "w4g32": (4, 32)}  # tag -> (bits, group)
MODEL = "smollm2-135m"


def memories_for(model: str, tags: list[str]) -> dict[str, int]:
    """tag -> the bytes of ``model`` quantized at the tag's bits and group (the table's budgets);
    the constants :data:`MEMORIES` for the embedded SmolLM2."""
    if model == MODEL:
        return {t: MEMORIES[t] for t in tags}
    from benchmarks.quality.gptq import quantized_bytes
    from bitstack.models.source import load_float_model

    float_model = load_float_model(model).model
    return {t: quantized_bytes(float_model, *BASELINES[t]) for t in tags}


def parse_settings(text: str) -> dict:
    """``"key=value key=value"`` -> CompressConfig overrides, typed by the fields' defaults."""
    from bitstack.config import CompressConfig

    kinds = {f.name: type(f.default) for f in dataclasses.fields(CompressConfig)}
    out = {}
    for item in text.split():
        key, _, value = item.partition("=")
        if key not in kinds:
            raise SystemExit(f"unknown setting {key!r} (CompressConfig fields: {', '.join(sorted(kinds))})")
        out[key] = kinds[key](value)
    return out


def split_data(data: str | Path, work: str | Path, fraction: float = 0.8) -> tuple[Path, Path]:
    """The calibration and validation parts of ``data/calibration_wikipedia.txt`` (written once)."""
    from bitstack.calibration.split import write_split

    calib, val = Path(work) / "calibration_wikipedia.calib.txt", Path(work) / "calibration_wikipedia.val.txt"
    if not (calib.is_file() and val.is_file()):
        calib, val = write_split(Path(data) / "calibration_wikipedia.txt", work, fraction)
    return calib, val


def compress_smollm(out: Path, calib: Path, settings: dict, *, nsamples: int, seqlen: int, seed: int,
                    device: str, model: str = MODEL) -> float:
    """Compress ``model`` (default the embedded SmolLM2-135M) with ``settings`` (unless ``out``
    exists); seconds taken."""
    import bitstack
    from bitstack.config import CompressConfig

    if (out / "manifest.json").is_file():
        return 0.0
    started = time.perf_counter()
    config = CompressConfig(calib=str(calib), nsamples=nsamples, seqlen=seqlen, seed=seed, **settings)
    bitstack.compress(model, out, config, device=device, progress=False, overwrite=True)
    return time.perf_counter() - started


def evaluate_model(model, tokenizer, text: str, *, max_windows: int | None, seqlen: int, zeroshot: str | None,
                   zs_limit: int | None, batch_size: int) -> dict:
    """Perplexity on ``text`` (windows of ``seqlen``) and, with ``zeroshot`` (a folder of task
    files), the five tasks' accuracies and their average."""
    from bitstack.evaluation.perplexity import perplexity
    from bitstack.evaluation.zeroshot import evaluate_tasks

    started = time.perf_counter()
    with torch.no_grad():
        ppl = perplexity(model, tokenizer, text, seqlen=seqlen, max_windows=max_windows, batch_size=min(batch_size, 8),
                         progress=False)
        result = {"ppl": ppl.ppl, "windows": ppl.windows, "tokens": ppl.tokens}
        if zeroshot:
            tasks = evaluate_tasks(model, tokenizer, {t: str(Path(zeroshot) / f"{t}.jsonl") for t in TASKS},
                                   batch_size=batch_size, limit=zs_limit, progress=False)
            result["zs_avg"] = tasks["average"]
            result["zs"] = {t: m["acc"] for t, m in tasks["tasks"].items()}
            result["zs_n"] = {t: m["n"] for t, m in tasks["tasks"].items()}
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def evaluate_artifact(path: Path, memories: dict[str, int], text: str, *, device: str, **options) -> dict[str, dict]:
    """:func:`evaluate_model` of the longest stack prefix that fits each budget (tag -> bytes),
    loaded once (:class:`~bitstack.evaluation.stack_eval.StackEvaluator`, bfloat16 compute)."""
    from bitstack.runtime.loader import load_tokenizer
    from bitstack.sorting.measure import StackEvaluator
    from bitstack.sorting.resort import stack_order

    evaluator = StackEvaluator(path, device=device, batch_size=1)
    tokenizer = load_tokenizer(path)
    order = stack_order(evaluator.manifest)
    params = evaluator.manifest.decomposed_params()
    out = {}
    for tag, budget in memories.items():
        count = bisect.bisect_right(evaluator.prefix_bytes, int(budget)) - 1  # the longest prefix that fits
        if count < evaluator.manifest.floor_blocks:
            raise SystemExit(f"{tag}: budget {budget} B is below the artifact's floor")
        evaluator.set_counts(evaluator.counts_at(order, count))
        memory = evaluator.prefix_bytes[count]
        out[tag] = {"memory_bytes": memory, "bits_per_param": 8 * (memory - evaluator.prefix_bytes[0]) / params,
                    **evaluate_model(evaluator.model, tokenizer, text, **options)}
    return out


def run_jobs(commands: list[tuple[Path, list[str]]], jobs: int, log: Path, *, on_done=None,
             deadline: float | None = None) -> list[Path]:
    """Run ``(result file, argv)`` commands, ``jobs`` at a time, skipping those whose file exists;
    each process's output goes to ``log`` as ``<result stem>.log``.  ``on_done(result file, ok)`` is
    called after each job (ok: it succeeded) and returns more commands, run before the pending ones.  At
    ``deadline`` (seconds from the start) the running processes are killed and nothing more starts.
    Returns the result files that exist afterwards."""
    started = time.perf_counter()
    pending = [(out, argv) for out, argv in commands if not out.is_file()]
    done = [out for out, _ in commands if out.is_file()]
    running: list[tuple[subprocess.Popen, Path]] = []
    log.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    stamp = lambda: f"[{time.perf_counter() - started:6.0f} s]"
    for out in list(done):
        pending[:0] = [c for c in (on_done(out, True) if on_done else []) if not c[0].is_file()]
    while pending or running:
        if deadline is not None and time.perf_counter() - started > deadline:
            for proc, out in running:
                proc.kill()
                print(f"{stamp()} killed at the deadline: {out.stem}", flush=True)
            print(f"{stamp()} not started: {', '.join(o.stem for o, _ in pending) or 'none'}", flush=True)
            break
        while pending and len(running) < jobs:
            out, argv = pending.pop(0)
            handle = open(log / f"{out.stem}.log", "w")
            running.append((subprocess.Popen([sys.executable, *argv], stdout=handle, stderr=subprocess.STDOUT, env=env), out))
            print(f"{stamp()} started {out.stem}", flush=True)
        for proc, out in list(running):
            if proc.poll() is None:
                continue
            running.remove((proc, out))
            ok = proc.returncode == 0 and out.is_file()
            print(f"{stamp()} {'done' if ok else f'FAILED (exit {proc.returncode})'}: {out.stem}", flush=True)
            if on_done is not None:
                pending[:0] = [c for c in on_done(out, ok) if not c[0].is_file()]
        time.sleep(0.5)
    return [p for p in log.parent.glob("*.json")]


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as JSON atomically (temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def summary(values: list[float]) -> dict:
    """{mean, std (sample; 0 for one value), min, max, n} of finite values (NaN fields if none)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return {"mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}
