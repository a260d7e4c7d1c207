"""Which ranking inside each level makes the best ``leveled`` order.

``leveled`` puts block i of every weight before any block i+1 and ranks the weights inside a
level by a cheap score.  This script builds the level-by-level order from four scores, all from
one artifact, and scores each on the same test windows and budgets as a finished
``python -m benchmarks.sorting.study`` run (whose ``study.json`` it reads, for the budgets, the
validation windows' settings and the ``average`` curve it compares against):

* ``leveled-fisher``: Fisher-weighted energy drop per byte (the ``leveled`` strategy itself);
* ``leveled-fisher-rel``: the same divided by the weight's own Fisher-weighted energy;
* ``leveled-proxy-rel``: the plain energy drop per byte relative to the weight's energy (``proxy``);
* ``leveled-energy-abs``: the plain energy drop per byte.

Example (the run behind ``benchmarks/results/sorting/default_artifact_h100_rankings.json``; the validation
settings must match the study's):

    python -m benchmarks.sorting.leveled_rankings --artifact smol.bstk --study runs/study/study.json \\
        --val calibration_wikipedia.txt --val-windows 8 --val-seqlen 512 --batch-size 8 \\
        --ppl wikitext2_test.txt --device cuda --out runs/leveled_rankings.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", required=True)
    parser.add_argument("--study", required=True, help="study.json of a benchmarks.sorting.study run on the same artifact")
    parser.add_argument("--val", required=True)
    parser.add_argument("--val-windows", type=int, default=8)
    parser.add_argument("--val-seqlen", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--ppl", required=True, help="test text (e.g. WikiText-2 test)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", required=True, help="JSON file of every curve")
    parser.add_argument("--result", default=None, help="also write a result file (benchmarks/resultfile.py)")
    args = parser.parse_args(argv)

    from bitstack.calibration.samples import tokenize_text
    from bitstack.sorting.strategies import leveled, order_from_scores, proxy_scores
    from bitstack.evaluation.curve import evaluate_order
    from bitstack.evaluation.perplexity import token_windows
    from bitstack.sorting.measure import StackEvaluator
    from bitstack.runtime.loader import load_tokenizer
    from bitstack.sorting import SortSettings, energy_stats, fisher_diagonal, validation_windows

    study = json.loads(Path(args.study).read_text())
    setup = study["setup"]
    evaluator = StackEvaluator(args.artifact, device=args.device, batch_size=args.batch_size)
    settings = SortSettings(val=args.val, val_windows=args.val_windows, val_seqlen=args.val_seqlen,
                            batch_size=args.batch_size, device=args.device)
    val = validation_windows(evaluator, settings)
    if hashlib.sha256(val.numpy().tobytes()).hexdigest() != setup["val_sha256"]:
        parser.error("the validation windows differ from the study's: pass its --val, --val-windows and --val-seqlen")
    tokenizer = load_tokenizer(args.artifact)
    test = token_windows(tokenize_text(tokenizer, Path(args.ppl).read_text(encoding="utf-8"), special_tokens=True),
                         setup["eval_seqlen"], setup["eval_windows"])
    fisher = energy_stats(evaluator, fisher_diagonal(evaluator, val, progress=False), progress=False)
    plain = energy_stats(evaluator, progress=False)
    orders = {
        "leveled-fisher": leveled(order_from_scores([proxy_scores(s, relative=False) for s in fisher])),
        "leveled-fisher-rel": leveled(order_from_scores([proxy_scores(s) for s in fisher])),
        "leveled-proxy-rel": leveled(order_from_scores([proxy_scores(s) for s in plain])),
        "leveled-energy-abs": leveled(order_from_scores([proxy_scores(s, relative=False) for s in plain])),
    }
    average = {p["budget_bytes"]: p["ppl"] for p in study["strategies"]["average"]["points"]}
    curves = {}
    for name, order in orders.items():
        points = evaluate_order(evaluator, order, setup["budgets"], test, label=name, progress=False)
        curves[name] = [p.to_dict() for p in points]
        print(name, " ".join(f"{p.memory_bytes / 1e6:.1f}:{p.ppl:.2f}({100 * (p.ppl / average[p.budget_bytes] - 1):+.1f}%)"
                             for p in points), flush=True)
    Path(args.out).write_text(json.dumps(curves, indent=1) + "\n")
    if args.result:
        from benchmarks.resultfile import write_result

        write_result(args.result, title="Rankings inside each level of `leveled`, relative to `average`", topic="sorting",
                     columns=["budget (MB)", "bits/param", *(f"`{n}`" for n in curves)], rows=result_rows(curves, average),
                     notes=("The artifact, validation and test windows and budgets of the study whose `average` curve is "
                            "the reference; perplexity relative to `average` (+x % = worse). `leveled-fisher` is `leveled`."),
                     extra={"series": curves})
    return 0


def result_rows(curves: dict[str, list[dict]], average: dict[int, float]) -> list[list]:
    """Per budget between floor and full stack: budget, bits/param, each ranking's perplexity relative to ``average``."""
    names = list(curves)
    first = curves[names[0]]
    return [[f"{p['budget_bytes'] / 1e6:.1f}", f"{p['bits_per_param']:.2f}",
             *(f"{100 * (curves[n][k]['ppl'] / average[p['budget_bytes']] - 1):+.1f} %" for n in names)]
            for k, p in enumerate(first) if 0 < k < len(first) - 1 and p["budget_bytes"] in average]


if __name__ == "__main__":
    raise SystemExit(main())
