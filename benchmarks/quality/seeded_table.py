"""The quality table: BitStack and fixed-size baselines at matched memory, over calibration seeds.

One command builds every row: the float model; BitStack (``--settings``, one artifact per seed,
each evaluated at every memory of the table); GPTQ with act-order (one per seed and bit width)
and round-to-nearest (data-free, one run) from :mod:`benchmarks.quality.gptq`.  Calibration:
``--nsamples`` × ``--seqlen`` tokens of the first 80 % of ``calibration_wikipedia.txt``'s passages
(the same tokens for BitStack and GPTQ at one seed; the last 20 % is the validation text the
settings were tuned on).  Evaluation: WikiText-2 test (all 148 windows of 2048) and all zero-shot
examples, bfloat16.  Each row is the mean, sample standard deviation and range over the seeds.
Jobs run as parallel processes (``--jobs``); finished jobs are kept in ``--work`` and skipped.

    python -m benchmarks.quality.seeded_table --data ../shared/data --work /tmp/table --device cuda \\
        --jobs 8 --out benchmarks/results/quality/seeded_table.json
    python -m benchmarks.quality.seeded_table --quick --data ../shared/data --work /tmp/table-quick
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from benchmarks.quality.common import (MEMORIES, compress_smollm, evaluate_artifact, evaluate_model, parse_settings,
                                       run_jobs, split_data, summary, write_json)

# the tuned BitStack settings (benchmarks/results/quality/tune_*.json); CompressConfig's defaults otherwise
DEFAULT_SETTINGS = "rotate=hadamard"
BASELINES = {"w4g64": (4, 64), "w3g64": (3, 64), "w2g64": (2, 64), "w4g32": (4, 32)}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder with calibration_wikipedia.txt, wikitext2_test.txt, zeroshot/")
    parser.add_argument("--work", required=True, help="folder for artifacts and per-job results")
    parser.add_argument("--settings", default=DEFAULT_SETTINGS, help="BitStack CompressConfig overrides, 'key=value ...'")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--memories", default="w4g32,w4g64,w3g64,w2g64", help=f"among {', '.join(MEMORIES)}")
    parser.add_argument("--methods", default="float,bitstack,gptq,rtn")
    parser.add_argument("--nsamples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--max-windows", type=int, default=None, help="WikiText-2 windows (default: all 148)")
    parser.add_argument("--zs-limit", type=int, default=None, help="examples per zero-shot task (default: all)")
    parser.add_argument("--no-zeroshot", action="store_true")
    parser.add_argument("--batch-size", type=int, default=64, help="zero-shot requests per forward")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--quick", action="store_true",
                        help="CPU smoke test: 2 seeds, 4 x 256 calibration tokens, 1 window, 5 examples per task, w4g64/w3g64")
    parser.add_argument("--out", default=None, help="result file (benchmarks/resultfile.py schema)")
    parser.add_argument("--job", default=None, help=argparse.SUPPRESS)  # internal: run one job
    return parser


def _apply_quick(args) -> None:
    if args.quick:
        args.seeds, args.memories, args.nsamples, args.seqlen = "0,1", "w4g64,w3g64", 4, 256
        args.max_windows, args.zs_limit, args.batch_size = 1, 5, 16


def _jobs(args) -> list[str]:
    methods, seeds, tags = args.methods.split(","), args.seeds.split(","), args.memories.split(",")
    jobs = ["float"] if "float" in methods else []
    jobs += [f"bitstack-s{s}" for s in seeds] if "bitstack" in methods else []
    for method in ("gptq", "rtn"):
        if method in methods:
            for tag in tags:
                jobs += [f"{method}-{tag}-s{s}" for s in seeds] if method == "gptq" else [f"rtn-{tag}"]
    return jobs


def _options(args) -> dict:
    return {"max_windows": args.max_windows, "seqlen": 2048 if not args.quick else 512, "zs_limit": args.zs_limit,
            "zeroshot": None if args.no_zeroshot else str(Path(args.data) / "zeroshot"), "batch_size": args.batch_size}


def _run_job(args, job: str) -> dict:
    from benchmarks.quality.gptq import quantize_model, quantized_bytes
    from bitstack.calibration.samples import text_file_samples
    from bitstack.models.source import load_float_model

    work = Path(args.work)
    calib, _ = split_data(args.data, work)
    text = (Path(args.data) / "wikitext2_test.txt").read_text(encoding="utf-8")
    tags = args.memories.split(",")
    if job.startswith("bitstack-s"):
        seed = int(job[len("bitstack-s"):])
        artifact = work / f"{job}.bstk"
        seconds = compress_smollm(artifact, calib, parse_settings(args.settings), nsamples=args.nsamples,
                                  seqlen=args.seqlen, seed=seed, device=args.device)
        evals = evaluate_artifact(artifact, {t: MEMORIES[t] for t in tags}, text, device=args.device, **_options(args))
        return {"job": job, "settings": args.settings, "seed": seed, "compress_seconds": round(seconds, 1), "evals": evals}
    loaded = load_float_model("smollm2-135m")
    model = loaded.model.float().eval().to(args.device)
    result: dict = {"job": job}
    if job != "float":
        method, tag, *rest = job.split("-")
        bits, group = BASELINES[tag]
        seed = int(rest[0][1:]) if rest else None
        samples = None
        if method == "gptq":
            samples = text_file_samples(str(calib), loaded.tokenizer, args.nsamples, args.seqlen, seed)
        started = time.perf_counter()
        quantize_model(model, method, bits, group, samples)
        result.update(seed=seed, tag=tag, quantize_seconds=round(time.perf_counter() - started, 1),
                      memory_bytes=quantized_bytes(model, bits, group))
    model = model.to(torch.bfloat16)
    result.update(evaluate_model(model, loaded.tokenizer, text, **_options(args)))
    return result


def _rows(args, results: dict[str, dict]) -> tuple[list[str], list[list]]:
    tags, seeds = args.memories.split(","), args.seeds.split(",")
    zs = not args.no_zeroshot

    def row(memory_tag, method, entries):
        ppl = summary([e["ppl"] for e in entries])
        out = [memory_tag, method, len(entries), round(max(e["memory_bytes"] for e in entries) / 1e6, 2) if entries and
               "memory_bytes" in entries[0] else 269.03, round(ppl["mean"], 3), round(ppl["std"], 3),
               f"{ppl['min']:.2f}-{ppl['max']:.2f}"]
        if zs:
            avg = summary([100 * e["zs_avg"] for e in entries])
            out += [round(avg["mean"], 2), round(avg["std"], 2)]
            out += [round(summary([100 * e["zs"][t] for e in entries])["mean"], 1) for t in ("arc_easy", "arc_challenge",
                                                                                             "piqa", "winogrande",
                                                                                             "lambada_openai")]
        return out

    columns = ["memory", "method", "seeds", "memory MB", "WikiText-2 ppl (mean)", "ppl std", "ppl range"]
    if zs:
        columns += ["zero-shot avg", "zero-shot std", "ARC-e", "ARC-c", "PIQA", "WinoG", "LAMBADA"]
    rows = []
    if "float" in results:
        rows.append(row("-", "float (bf16)", [results["float"]]))
    for tag in tags:
        entries = {"BitStack": [results[f"bitstack-s{s}"]["evals"][tag] for s in seeds if f"bitstack-s{s}" in results],
                   "GPTQ (act-order)": [results[f"gptq-{tag}-s{s}"] for s in seeds if f"gptq-{tag}-s{s}" in results],
                   "RTN": [results[f"rtn-{tag}"]] if f"rtn-{tag}" in results else []}
        for method, found in entries.items():
            if found:
                rows.append(row(tag, method, found))
    return columns, rows


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _apply_quick(args)
    parse_settings(args.settings)  # fail fast
    work = Path(args.work)
    if args.job is not None:
        write_json(work / f"{args.job}.json", _run_job(args, args.job))
        return 0
    started = time.perf_counter()
    split_data(args.data, work)
    base = list(argv if argv is not None else sys.argv[1:])
    jobs = _jobs(args)
    # the compressions take longest: started first
    jobs.sort(key=lambda j: not j.startswith("bitstack"))
    run_jobs([(work / f"{j}.json", ["-m", "benchmarks.quality.seeded_table", *base, "--job", j]) for j in jobs],
             args.jobs, work / "logs")
    results = {j: json.loads((work / f"{j}.json").read_text()) for j in jobs if (work / f"{j}.json").is_file()}
    columns, rows = _rows(args, results)
    for r in [columns] + rows:
        print(" | ".join(str(c) for c in r), flush=True)
    missing = [j for j in jobs if j not in results]
    if args.out:
        from benchmarks.resultfile import write_result

        notes = (f"SmolLM2-135M-Instruct (embedded GGUF, dequantized). BitStack settings: '{args.settings}'. Calibration: "
                 f"{args.nsamples} x {args.seqlen} tokens of the first 80% of calibration_wikipedia.txt's passages, seeds "
                 f"{args.seeds} (BitStack and GPTQ share the tokens of a seed; RTN uses none). WikiText-2 test: "
                 f"{args.max_windows or 'all'} windows of 2048; zero-shot: "
                 + ("none" if args.no_zeroshot else f"{args.zs_limit or 'all'} examples per task, acc")
                 + f". Memory by the llmcompressor rule (bf16 scale + bits-wide zero per group). Wall {time.perf_counter() - started:.0f} s."
                 + (f" Missing jobs: {', '.join(missing)}." if missing else ""))
        write_result(args.out, title="Quality at matched memory over calibration seeds (SmolLM2-135M)", topic="quality",
                     columns=columns, rows=rows, notes=notes, extra={"jobs": results})
    return 0 if not missing else 1


if __name__ == "__main__":
    raise SystemExit(main())
