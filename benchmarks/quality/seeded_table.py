"""The quality table: BitStack and fixed-size baselines at matched memory, over calibration seeds.

One command builds every row (jobs of :mod:`benchmarks.quality.jobs`, run as parallel processes):

1. **Choice on validation text.** Each ``--candidate NAME=OVERRIDES`` (``CompressConfig`` fields)
   is compressed at seed 0 and scored by perplexity on the validation part of
   ``calibration_wikipedia.txt`` (its last 20 % of passages; calibration uses the first 80 %) at
   the ``--select`` memories; the candidate with the least summed log-perplexity wins.  With no
   candidate, ``--settings`` is used as given.
2. **The table**, on WikiText-2 test (all 148 windows of 2048) and all zero-shot examples: the
   float model; BitStack with the chosen settings, one artifact per seed (seed 0's is the
   candidate's own), each evaluated at every memory; GPTQ with act-order per seed and RTN
   (:mod:`benchmarks.quality.gptq`) at each memory's bit width and group.  BitStack and GPTQ use
   the same calibration tokens at each seed.  Each row: mean, sample standard deviation, range.

The baselines run while the candidates compress.  Finished jobs (``--work``/NAME.json) are
skipped on a rerun; at ``--deadline`` seconds, running jobs are killed and the table is written
from what finished (the notes list what is missing).

    python -m benchmarks.quality.seeded_table --data ../shared/data --work /tmp/table --device cuda --jobs 10 \\
        --candidate base= --candidate rot=rotate=hadamard --out benchmarks/results/quality/seeded_table.json
    python -m benchmarks.quality.seeded_table --quick --data ../shared/data --work /tmp/table-quick --candidate rot=rotate=hadamard
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

from benchmarks.quality.common import MEMORIES, MODEL, memories_for, parse_settings, run_jobs, split_data, summary

TASK_COLUMNS = (("arc_easy", "ARC-e"), ("arc_challenge", "ARC-c"), ("piqa", "PIQA"), ("winogrande", "WinoG"),
                ("lambada_openai", "LAMBADA"))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder with calibration_wikipedia.txt, wikitext2_test.txt, zeroshot/")
    parser.add_argument("--work", required=True, help="folder for artifacts and per-job results")
    parser.add_argument("--candidate", action="append", default=[], help="NAME=OVERRIDES, chosen on validation (repeatable)")
    parser.add_argument("--settings", default="", help="BitStack overrides when no --candidate is given")
    parser.add_argument("--select", default="w3g64,w4g64", help="memories whose validation log-perplexities are summed")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--memories", default="w4g32,w4g64,w3g64,w2g64", help=f"among {', '.join(MEMORIES)}")
    parser.add_argument("--baselines", default="float,gptq,rtn")
    parser.add_argument("--nsamples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--max-windows", type=int, default=None, help="WikiText-2 windows (default: all 148)")
    parser.add_argument("--val-windows", type=int, default=None, help="validation windows (default: all)")
    parser.add_argument("--val-seqlen", type=int, default=2048, help="tokens per validation window")
    parser.add_argument("--eval-seqlen", type=int, default=2048, help="tokens per test window (WikiText-2)")
    parser.add_argument("--zs-limit", type=int, default=None, help="examples per zero-shot task (default: all)")
    parser.add_argument("--no-zeroshot", action="store_true")
    parser.add_argument("--batch-size", type=int, default=64, help="zero-shot requests per forward")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--deadline", type=float, default=None, help="seconds: then kill what runs and write the table")
    parser.add_argument("--quick", action="store_true", help="CPU smoke test: 2 seeds, 4 x 256 calibration tokens, "
                        "1 window of 512, 5 examples per task, w4g64/w3g64, GPTQ and RTN at w4g64 only")
    parser.add_argument("--out", default=None, help="result file (benchmarks/resultfile.py schema)")
    parser.add_argument("--model", default=MODEL, help="model to compress (tests use a tiny one); budgets follow from it")
    return parser


def _spec(args) -> dict:
    quick = args.quick
    tags = args.memories.split(",")
    return {"data": str(Path(args.data).resolve()), "work": str(Path(args.work).resolve()), "device": args.device,
            "model": args.model, "memory_bytes": memories_for(args.model, sorted(set(tags + args.select.split(",")))),
            "nsamples": 4 if quick else args.nsamples, "seqlen": 256 if quick else args.seqlen,
            "memories": tags, "settings": args.settings,
            "max_windows": 1 if quick else args.max_windows, "eval_seqlen": 512 if quick else args.eval_seqlen,
            "zs_limit": 5 if quick else args.zs_limit, "zeroshot": not args.no_zeroshot, "batch_size": args.batch_size,
            "val_windows": 1 if quick else args.val_windows, "val_seqlen": 512 if quick else args.val_seqlen}


def _command(work: Path, job: str, spec: dict) -> tuple[Path, list[str]]:
    return work / f"{job}.json", ["-m", "benchmarks.quality.jobs", job, "--json", json.dumps(spec)]


def _winner(work: Path, candidates: dict[str, str], select: list[str], failed: set[str] = frozenset()) -> str | None:
    """The candidate with the least summed log validation perplexity at ``select``, once every
    candidate has finished (``failed``: names whose job failed); None before, or if all failed."""
    scores = {}
    for name in candidates:
        path = work / f"tune-{name}.json"
        if path.is_file():
            val = json.loads(path.read_text())["val"]
            scores[name] = sum(math.log(val[t]["ppl"]) for t in select)
    if not scores or len(scores) + len(set(failed) & set(candidates)) < len(candidates):
        return None
    return min(scores, key=scores.get)


def _row(tag: str, method: str, entries: list[dict], zeroshot: bool) -> list:
    ppl = summary([e["ppl"] for e in entries])
    memory = max(e.get("memory_bytes", 269_030_000) for e in entries) / 1e6
    row = [tag, method, len(entries), round(memory, 2), round(ppl["mean"], 3), round(ppl["std"], 3),
           f"{ppl['min']:.2f}-{ppl['max']:.2f}"]
    if zeroshot:
        avg = summary([100 * e["zs_avg"] for e in entries])
        row += [round(avg["mean"], 2), round(avg["std"], 2)]
        row += [round(summary([100 * e["zs"][t] for e in entries])["mean"], 1) for t, _ in TASK_COLUMNS]
    return row


def table(results: dict[str, dict], tags: list[str], seeds: list[str], zeroshot: bool) -> tuple[list[str], list[list]]:
    """Columns and rows of the table from the jobs' results (module docstring)."""
    columns = ["memory", "method", "seeds", "memory MB", "WikiText-2 ppl (mean)", "ppl std", "ppl range"]
    if zeroshot:
        columns += ["zero-shot avg", "zero-shot std"] + [label for _, label in TASK_COLUMNS]
    rows = []
    if "float" in results:
        rows.append(_row("-", "float (bf16)", [results["float"]], zeroshot))
    for tag in tags:
        found = {"BitStack": [results[f"bitstack-s{s}@{tag}"] for s in seeds if f"bitstack-s{s}@{tag}" in results],
                 "GPTQ (act-order)": [results[f"gptq-{tag}-s{s}"] for s in seeds if f"gptq-{tag}-s{s}" in results],
                 "RTN": [results[f"rtn-{tag}"]] if f"rtn-{tag}" in results else []}
        rows += [_row(tag, method, entries, zeroshot) for method, entries in found.items() if entries]
    return columns, rows


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    started = time.perf_counter()
    candidates = {}
    for item in args.candidate:
        name, _, overrides = item.partition("=")
        parse_settings(overrides)  # fail fast on unknown fields
        candidates[name] = overrides
    parse_settings(args.settings)
    work = Path(args.work)
    spec = _spec(args)
    split_data(args.data, work)
    tags, seeds, select = spec["memories"], args.seeds.split(","), args.select.split(",")
    if args.quick:
        seeds, baseline_tags = seeds[:2], tags[:1]
    else:
        baseline_tags = tags
    baselines = args.baselines.split(",")
    chosen = {"settings": args.settings if not candidates else None}

    def bitstack_jobs(settings: str) -> list[tuple[Path, list[str]]]:
        own = {**spec, "settings": settings}
        return [_command(work, f"bitstack-s{s}", own) for s in seeds]

    failed: set[str] = set()

    def on_done(out: Path, ok: bool) -> list[tuple[Path, list[str]]]:
        job = out.stem
        if not ok:
            failed.add(job[len("tune-"):] if job.startswith("tune-") else job)
        if job.startswith("tune-") and chosen["settings"] is None:
            winner = _winner(work, candidates, select, failed)
            if winner is None:
                return []
            chosen.update(settings=candidates[winner], winner=winner)
            if "0" in seeds and not (work / "bitstack-s0.bstk").exists():  # the winner's artifact is seed 0's
                os.symlink(work / f"tune-{winner}.bstk", work / "bitstack-s0.bstk")
            print(f"chosen on validation: {winner} ({candidates[winner] or 'defaults'})", flush=True)
            return bitstack_jobs(chosen["settings"])
        if ok and job.startswith("bitstack-s") and "@" not in job:
            own = {**spec, "settings": json.loads(out.read_text())["settings"]}
            return [_command(work, f"{job}@{t}", own) for t in tags]
        return []

    commands = [_command(work, f"tune-{n}", {**spec, "settings": o, "memories": sorted(set(select + tags))})
                for n, o in candidates.items()]
    if not candidates:
        commands += bitstack_jobs(args.settings)
    commands += [_command(work, "float", spec)] if "float" in baselines else []
    for tag in baseline_tags:
        commands += [_command(work, f"gptq-{tag}-s{s}", spec) for s in seeds] if "gptq" in baselines else []
        commands += [_command(work, f"rtn-{tag}", spec)] if "rtn" in baselines else []
    run_jobs(commands, args.jobs, work / "logs", on_done=on_done, deadline=args.deadline)
    results = {p.stem: json.loads(p.read_text()) for p in work.glob("*.json")}
    columns, rows = table(results, tags, seeds, not args.no_zeroshot)
    tuning = {n: {t: results[f"tune-{n}"]["val"][t]["ppl"] for t in results[f"tune-{n}"]["val"]}
              for n in candidates if f"tune-{n}" in results}
    for name, val in tuning.items():
        print(f"validation {name} ({candidates[name] or 'defaults'}): " + ", ".join(f"{t} {p:.3f}" for t, p in val.items()))
    for r in [columns] + rows:
        print(" | ".join(str(c) for c in r), flush=True)
    if args.out:
        from benchmarks.resultfile import write_result

        expected = len(seeds) * len(tags)
        done = sum(1 for k in results if k.startswith("bitstack-s") and "@" in k)
        notes = (f"SmolLM2-135M-Instruct (embedded GGUF, dequantized). BitStack: '{chosen.get('settings')}'"
                 + (f" (candidate {chosen['winner']}, the least summed log validation perplexity at {args.select})"
                    if chosen.get("winner") else "")
                 + f". Calibration: {spec['nsamples']} x {spec['seqlen']} tokens of the first 80% of calibration_wikipedia.txt's "
                 f"passages, seeds {','.join(seeds)} (BitStack and GPTQ share a seed's tokens; RTN uses none). Test: WikiText-2, "
                 f"{spec['max_windows'] or 'all'} windows of {spec['eval_seqlen']}; zero-shot: "
                 + ("none" if args.no_zeroshot else f"{spec['zs_limit'] or 'all'} examples per task, acc")
                 + f". Memory: llmcompressor's rule (bf16 scale + bits-wide zero per group). BitStack evaluations done: "
                 f"{done} of {expected}. Wall {time.perf_counter() - started:.0f} s.")
        write_result(args.out, title="Quality at matched memory over calibration seeds (SmolLM2-135M)", topic="quality",
                     columns=columns, rows=rows, notes=notes,
                     extra={"validation_ppl": tuning, "candidates": candidates, "chosen": chosen, "jobs": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
