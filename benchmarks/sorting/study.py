"""Sorting study: the memory–perplexity curve of every ordering strategy, and its cost.

One artifact, every strategy of ``bitstack.config.SORT_STRATEGIES``: each strategy's order is
computed on validation text (calibration-style, not the test set), then the artifact is
evaluated *in memory* in that order (no rewrite: :func:`bitstack.evaluation.curve.evaluate_order`
assigns each weight the blocks of the longest prefix that fits, exactly as ``bitstack.load``
would after ``bitstack sort``) on the test text at the same budgets for all strategies.

Resumable: orders and curve points go to ``OUT/study.json`` as they are finished, and the
``average``/``greedy`` measurements to ``ARTIFACT.sortcache/``; a rerun skips finished work.
``--report-only`` redraws the plot and ``OUT/report.md`` from ``OUT/study.json`` alone (no artifact,
no model), e.g. after a run that was stopped before its last strategy.

Example: the run behind ``benchmarks/results/sorting_study/`` (an H200; the data files carried):

    bitstack compress smollm2-135m -o /tmp/smol.bstk --calib calibration_wikipedia.txt --device cuda
    python -m benchmarks.sorting.study --device cuda --artifact /tmp/smol.bstk \\
        --val calibration_wikipedia.txt --ppl wikitext2_test.txt --eval-seqlen 2048 --max-windows 40 \\
        --batch-size 8 --points 13 --extra-budgets 85MB,90MB,95MB,100MB,115MB,125MB,150MB,180MB \\
        --strategies proxy,fisher,random,average,greedy --out runs/sorting_study

On a CPU, ``--threads 1`` (the default): on a 2-core machine shared with other jobs, two torch
threads per process oversubscribe the cores and a forward pass was 6x slower than with one thread.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import time
from pathlib import Path

import torch


def _save(path: Path, data: dict) -> None:
    from bitstack.artifact.atomic import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(data, indent=1) + "\n").encode())


def main(argv: list[str] | None = None) -> int:
    from bitstack.config import SORT_STRATEGIES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact")
    parser.add_argument("--val", default="self", help="validation text for fisher/average/greedy (default: sampled from the model)")
    parser.add_argument("--val-windows", type=int, default=8)
    parser.add_argument("--val-seqlen", type=int, default=256)
    parser.add_argument("--ppl", help="test text (e.g. WikiText-2 test)")
    parser.add_argument("--eval-seqlen", type=int, default=512)
    parser.add_argument("--max-windows", type=int, default=16, help="test windows scored per budget")
    parser.add_argument("--points", type=int, default=13, help="budgets spread evenly from floor to full")
    parser.add_argument("--extra-budgets", default="", help="more budgets, e.g. 90MB,100MB (the low end is where orders differ)")
    parser.add_argument("--strategies", default=",".join(SORT_STRATEGIES))
    parser.add_argument("--greedy-step", type=int, default=8)
    parser.add_argument("--greedy-max-age", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--dtype", default=None, help="compute dtype (default: the artifact's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the study machine is shared)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--report-only", action="store_true",
                        help="only redraw the curve files and report.md from OUT/study.json (strategies with points)")
    parser.add_argument("--result", default=None, metavar="PREFIX",
                        help="also write result files PREFIX.json (perplexity per budget) and PREFIX_cost.json "
                             "(benchmarks/resultfile.py), e.g. benchmarks/results/sorting/NAME")
    args = parser.parse_args(argv)
    out = Path(args.out)
    state_file = out / "study.json"
    if args.report_only:
        state = json.loads(state_file.read_text())
        wanted = [s for s in args.strategies.split(",") if s]
        strategies = [s for s in wanted if "points" in state["strategies"].get(s, {})]
        finish(state, strategies, out, args.result)
        return 0
    if not args.artifact or not args.ppl:
        parser.error("--artifact and --ppl are required (unless --report-only)")

    from bitstack.calibration.samples import tokenize_text
    from bitstack.evaluation.curve import evaluate_order, spread_budgets
    from bitstack.evaluation.perplexity import token_windows
    from bitstack.sorting.measure import StackEvaluator
    from bitstack.memory import parse_memory
    from bitstack.runtime.loader import load_tokenizer
    from bitstack.sorting import SortSettings, compute_order, validation_windows

    torch.set_num_threads(args.threads)
    out.mkdir(parents=True, exist_ok=True)
    strategies = [s for s in args.strategies.split(",") if s]
    settings = SortSettings(val=args.val, val_windows=args.val_windows, val_seqlen=args.val_seqlen, batch_size=args.batch_size,
                            greedy_step=args.greedy_step, greedy_max_age=args.greedy_max_age, device=args.device, dtype=args.dtype)

    began = time.perf_counter()
    evaluator = StackEvaluator(args.artifact, device=args.device, dtype=args.dtype, batch_size=args.batch_size)
    print(f"loaded {args.artifact} in {time.perf_counter() - began:.1f} s", flush=True)
    val = validation_windows(evaluator, settings)
    tokenizer = load_tokenizer(args.artifact)
    test = token_windows(tokenize_text(tokenizer, Path(args.ppl).read_text(encoding="utf-8"), special_tokens=True),
                         args.eval_seqlen, args.max_windows)
    floor = evaluator.prefix_bytes[evaluator.manifest.floor_blocks]
    budgets = spread_budgets(floor, evaluator.prefix_bytes[-1], args.points)
    budgets = sorted(set(budgets) | {parse_memory(b) for b in args.extra_budgets.split(",") if b})

    setup = {"artifact": str(args.artifact), "val": args.val, "val_windows": int(val.shape[0]), "val_seqlen": int(val.shape[1]),
             "val_sha256": hashlib.sha256(val.numpy().tobytes()).hexdigest(), "ppl": args.ppl,
             "eval_seqlen": args.eval_seqlen, "eval_windows": int(test.shape[0]), "budgets": budgets,
             "dtype": str(evaluator.dtype), "greedy_step": args.greedy_step, "greedy_max_age": args.greedy_max_age}
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    if state.get("setup") != setup:
        state = {"setup": setup, "strategies": {}}
    if evaluator.device.type == "cuda":
        machine = f"{torch.cuda.get_device_name(evaluator.device)}, torch {torch.__version__}"
    else:
        machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    if "forward_seconds" not in state:  # the unit of cost: one full forward over the validation windows
        evaluator.set_counts(evaluator.num_blocks)
        evaluator.evaluate(val)  # warm-up
        t = time.perf_counter()
        for _ in range(3):
            evaluator.evaluate(val)
        state["forward_seconds"] = round((time.perf_counter() - t) / 3, 3)
        state["machine"] = machine
        _save(state_file, state)
    # what the plot and the report need, so that --report-only works without the artifact
    state["base_bytes"] = evaluator.prefix_bytes[0]
    state["params"] = evaluator.manifest.decomposed_params()
    state["title"] = f"SmolLM2-135M: universal order vs WikiText-2 ppl ({test.shape[0]}×{test.shape[1]} tokens)"

    for strategy in strategies:
        entry = state["strategies"].setdefault(strategy, {})
        if "order" not in entry:
            print(f"[{strategy}] computing the order", flush=True)
            result = compute_order(args.artifact, strategy, settings, evaluator=evaluator, windows=val)
            entry.update(order=result.order, info=result.info)
            _save(state_file, state)
            print(f"[{strategy}] {result.info}", flush=True)
        if "points" not in entry:
            order = [tuple(x) for x in entry["order"]]
            t = time.perf_counter()
            points = evaluate_order(evaluator, order, budgets, test, label=strategy)
            entry["points"] = [p.to_dict() for p in points]
            entry["curve_seconds"] = round(time.perf_counter() - t, 1)
            _save(state_file, state)
            print(f"[{strategy}] curve: " + ", ".join(f"{p.memory_bytes / 1e6:.1f} MB {p.ppl:.2f}" for p in points), flush=True)

    finish(state, strategies, out, args.result)
    return 0


def finish(state: dict, strategies: list[str], out: Path, result: str | None = None) -> None:
    """Write the curve files (CSV/JSON/PNG, all strategies on one axis) and ``report.md``; with
    ``result``, the result files ``RESULT.json`` and ``RESULT_cost.json``."""
    from bitstack.evaluation.curve import CurvePoint, write_curve

    series = {s: [CurvePoint(**p) for p in state["strategies"][s]["points"]] for s in strategies}
    paths = write_curve(series, out / "sorting_curve", base_bytes=state["base_bytes"], params=state["params"],
                        title=state.get("title"), meta={**state["setup"], "machine": state.get("machine")})
    text = report(state, strategies, state["params"], state["base_bytes"])
    (out / "report.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    print("wrote " + ", ".join(str(p) for p in paths.values()) + f", {out / 'report.md'}")
    if result:
        from benchmarks.resultfile import write_result

        (columns, rows), (cost_columns, cost_rows) = result_tables(state, strategies)
        setup = state["setup"]
        protocol = (f"Validation: {setup['val_windows']} × {setup['val_seqlen']} tokens of `{Path(setup['val']).name}`; "
                    f"test: the first {setup['eval_windows']} windows of {setup['eval_seqlen']} tokens of "
                    f"`{Path(setup['ppl']).name}`.")
        write_result(f"{result}.json", title=state.get("title", "Sorting strategies"), topic="sorting", columns=columns,
                     rows=rows, notes="Perplexity at each budget; in brackets, relative to `average` (+x % = worse). "
                     + protocol, extra={"setup": setup, "series": {s: state["strategies"][s]["points"] for s in strategies}})
        write_result(f"{result}_cost.json", title="Cost of computing each order", topic="sorting", columns=cost_columns,
                     rows=cost_rows, notes=f"One full forward over the validation windows took {state['forward_seconds']} s. "
                     + protocol, extra={s: state["strategies"][s]["info"] for s in strategies})


def result_tables(state: dict, strategies: list[str]) -> tuple[tuple[list, list], tuple[list, list]]:
    """((columns, rows) of perplexity per budget, each next to its ratio to ``average``; (columns, rows) of cost)."""
    points = {s: state["strategies"][s]["points"] for s in strategies}
    base, params = state["base_bytes"], state["params"]

    def ppl_cell(ppl: float | None, ref: float | None) -> str:
        if ppl is None or not math.isfinite(ppl):
            return "inf"
        text = f"{ppl:,.0f}" if ppl >= 1000 else f"{ppl:.2f}"
        return text if ref is None else f"{text} ({100 * (ppl / ref - 1):+.1f} %)"

    rows = []
    for k, budget in enumerate(state["setup"]["budgets"]):
        ref = points["average"][k]["ppl"] if "average" in points else None
        rows.append([f"{budget / 1e6:.1f}", f"{8 * (budget - base) / params:.2f}"]
                    + [ppl_cell(points[s][k]["ppl"], None if s == "average" else ref) for s in strategies])
    cost_columns = ["strategy", "seconds", "forward passes", "full-forward equivalents", "vs `average`", "curve seconds"]
    cost_rows = []
    avg = state["strategies"].get("average", {}).get("info", {}).get("forward_equivalents")
    for s in strategies:
        entry = state["strategies"][s]
        info = entry["info"]
        equiv = info["forward_equivalents"]
        ratio = ("–" if not avg or not equiv else "1×" if equiv == avg else
                 f"{avg / equiv:,.0f}× fewer" if equiv < avg else f"{equiv / avg:.2f}× more")
        cost_rows.append([s, info["seconds"], info["forwards"], equiv, ratio, entry.get("curve_seconds", "–")])
    return (["budget (MB)", "bits/param", *strategies], rows), (cost_columns, cost_rows)


def report(state: dict, strategies: list[str], params: int, base: int) -> str:
    """Markdown tables: perplexity per budget, gaps to ``average``, and each strategy's cost."""
    rows = {s: state["strategies"][s]["points"] for s in strategies}
    budgets = state["setup"]["budgets"]
    lines = ["| budget (MB) | bits/param | " + " | ".join(strategies) + " |", "|---" * (len(strategies) + 2) + "|"]
    for k, budget in enumerate(budgets):
        bits = 8 * (budget - base) / params
        cells = []
        for s in strategies:
            ppl = rows[s][k]["ppl"]
            cells.append("inf" if ppl is None or not math.isfinite(ppl) else f"{ppl:.2f}" if ppl < 1000 else f"{ppl:.0f}")
        lines.append(f"| {budget / 1e6:.1f} | {bits:.2f} | " + " | ".join(cells) + " |")
    if "average" in rows:
        lines += ["", "Perplexity relative to `average` (+x % = worse):", "",
                  "| budget (MB) | " + " | ".join(s for s in strategies if s != "average") + " |",
                  "|---" * len(strategies) + "|"]
        for k, budget in enumerate(budgets):
            ref = rows["average"][k]["ppl"]
            cells = [f"{100 * (rows[s][k]['ppl'] / ref - 1):+.1f} %" for s in strategies if s != "average"]
            lines.append(f"| {budget / 1e6:.1f} | " + " | ".join(cells) + " |")
    unit = state["forward_seconds"]
    lines += ["", f"Cost (one full forward over the validation windows = {unit} s on {state.get('machine')}):", "",
              "| strategy | seconds | forward passes | full-forward equivalents | curve seconds |", "|---|---|---|---|---|"]
    for s in strategies:
        entry = state["strategies"][s]
        info = entry["info"]
        lines.append(f"| {s} | {info['seconds']} | {info['forwards']} | {info['forward_equivalents']} | {entry.get('curve_seconds', '')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
