"""Tune method choices on validation text, never on the test set.

Each ``--setting NAME=OVERRIDES`` (``CompressConfig`` fields, e.g. ``rot=rotate=hadamard
level_weights=0.05,5,1,1``) compresses SmolLM2-135M from the calibration part of
``calibration_wikipedia.txt`` (its first 80 % of passages, :mod:`bitstack.calibration.split`) and
is scored by perplexity on the validation part (the last 20 %) at the table's memory budgets.
Neither part overlaps WikiText-2 test.  One process per setting, ``--jobs`` at a time.

    python -m benchmarks.quality.tune --data ../shared/data --work /tmp/tune --device cuda --jobs 6 \\
        --setting base= --setting rot=rotate=hadamard --out benchmarks/results/quality/tune.json
    python -m benchmarks.quality.tune --quick --data ../shared/data --work /tmp/tune-quick --setting base=
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks.quality.common import MEMORIES, compress_smollm, evaluate_artifact, parse_settings, run_jobs, split_data, write_json


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder with calibration_wikipedia.txt")
    parser.add_argument("--work", required=True, help="folder for the split, artifacts and per-setting results")
    parser.add_argument("--setting", action="append", default=[], help="NAME=KEY=VALUE KEY=VALUE ... (repeatable)")
    parser.add_argument("--memories", default="w2g64,w3g64,w4g64", help=f"budgets among {', '.join(MEMORIES)}")
    parser.add_argument("--nsamples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-windows", type=int, default=None, help="validation windows (default: all)")
    parser.add_argument("--val-seqlen", type=int, default=2048)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="CPU smoke test: 4 x 256 calibration tokens, 2 windows of 256")
    parser.add_argument("--out", default=None, help="result file (benchmarks/resultfile.py schema)")
    parser.add_argument("--job", default=None, help=argparse.SUPPRESS)  # internal: run one setting
    return parser


def _settings(args) -> dict[str, str]:
    out = {}
    for item in args.setting:
        name, _, overrides = item.partition("=")
        if not name or name in out:
            raise SystemExit(f"--setting needs a unique NAME=OVERRIDES, got {item!r}")
        parse_settings(overrides)  # fail fast on unknown fields
        out[name] = overrides
    if not out:
        raise SystemExit("give at least one --setting NAME=OVERRIDES")
    return out


def _run_one(args, name: str, overrides: str) -> None:
    work = Path(args.work)
    calib, val = split_data(args.data, work)
    artifact = work / f"{name}.bstk"
    seconds = compress_smollm(artifact, calib, parse_settings(overrides), nsamples=args.nsamples, seqlen=args.seqlen,
                              seed=args.seed, device=args.device)
    memories = {tag: MEMORIES[tag] for tag in args.memories.split(",")}
    evals = evaluate_artifact(artifact, memories, val.read_text(encoding="utf-8"), device=args.device,
                              max_windows=args.val_windows, seqlen=args.val_seqlen, zeroshot=None, zs_limit=None,
                              batch_size=8)
    write_json(work / f"{name}.json", {"setting": name, "overrides": overrides, "compress_seconds": round(seconds, 1),
                                       "evals": evals})


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.quick:
        args.nsamples, args.seqlen, args.val_windows, args.val_seqlen = 4, 256, 2, 256
    settings = _settings(args)
    work = Path(args.work)
    if args.job is not None:
        _run_one(args, args.job, settings[args.job])
        return 0
    started = time.perf_counter()
    split_data(args.data, work)  # once, before the jobs start
    base = [a for a in (argv if argv is not None else sys.argv[1:])]
    commands = [(work / f"{name}.json", ["-m", "benchmarks.quality.tune", *base, "--job", name]) for name in settings]
    run_jobs(commands, args.jobs, work / "logs")
    tags = args.memories.split(",")
    rows = []
    results = {}
    for name in settings:
        path = work / f"{name}.json"
        if not path.is_file():
            rows.append([name, settings[name]] + ["failed"] * (len(tags) + 1))
            continue
        result = json.loads(path.read_text())
        results[name] = result
        rows.append([name, settings[name]] + [round(result["evals"][t]["ppl"], 3) for t in tags]
                    + [result["compress_seconds"]])
    for row in rows:
        print(" | ".join(str(c) for c in row), flush=True)
    if args.out:
        from benchmarks.resultfile import write_result

        write_result(args.out, title="Method choices scored on validation text (held-out calibration passages)",
                     topic="quality", columns=["setting", "overrides"] + [f"val ppl @ {t}" for t in tags] + ["compress s"],
                     rows=rows, notes=(f"SmolLM2-135M; calibration: {args.nsamples} x {args.seqlen} tokens of the first 80% of "
                                       f"calibration_wikipedia.txt's passages, seed {args.seed}; validation: the last 20%, "
                                       f"windows of {args.val_seqlen} ({args.val_windows or 'all'}); memories: "
                                       + ", ".join(f"{t} = {MEMORIES[t]} B" for t in tags)
                                       + f"; wall {time.perf_counter() - started:.0f} s"),
                     extra={"results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
