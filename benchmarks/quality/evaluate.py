"""Evaluate one artifact at several memory budgets: WikiText-2 perplexity and zero-shot accuracy.

The same numbers as ``bitstack eval ART --memory M …`` at each budget, computed faster: the
artifact is loaded once (:class:`bitstack.evaluation.stack_eval.StackEvaluator`), and each budget
sets every weight to the blocks of the longest stack prefix that fits, with Ŵ rebuilt once per
budget instead of in every forward pass (bit-for-bit the pure-PyTorch ``BitStackLinear`` output).
One ``LABEL@TAG.json`` per budget goes to ``--out``, in ``bitstack eval --json``'s format, which
``python -m benchmarks.quality.table`` reads.

    python -m benchmarks.quality.evaluate --artifact runs/planes.bstk --label bitstack-planes \\
        --memory w4g64=113922688,w3g64=100452352 --ppl ../shared/data/wikitext2_test.txt \\
        --max-windows 4 --zeroshot ../shared/data/zeroshot --limit 100 --out runs/evals
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.resultfile import git_commit, machine

TASKS = ("arc_easy", "arc_challenge", "piqa", "winogrande", "lambada_openai")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", required=True)
    parser.add_argument("--label", required=True)
    parser.add_argument("--memory", required=True, help="TAG=BYTES,... (e.g. the baselines' memories)")
    parser.add_argument("--ppl", required=True)
    parser.add_argument("--max-windows", type=int, default=None)
    parser.add_argument("--zeroshot", default=None, help="folder with the task JSONL files")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", default=None, help="compute dtype (default: the artifact's)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)

    from bitstack.sorting.resort import stack_order
    from bitstack.evaluation.curve import _prefix_for
    from bitstack.evaluation.perplexity import perplexity
    from bitstack.sorting.measure import StackEvaluator
    from bitstack.evaluation.zeroshot import evaluate_tasks
    from bitstack.runtime.loader import load_tokenizer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = Path(args.ppl).read_text(encoding="utf-8")
    evaluator = StackEvaluator(args.artifact, device=args.device, dtype=args.dtype, batch_size=1)
    tokenizer = load_tokenizer(args.artifact)
    order = stack_order(evaluator.manifest)
    params = evaluator.manifest.decomposed_params()
    floor_blocks = evaluator.manifest.floor_blocks
    for item in args.memory.split(","):
        tag, _, budget = item.partition("=")
        target = out / f"{args.label}@{tag}.json"
        if target.is_file():
            continue
        count = _prefix_for(evaluator.prefix_bytes, floor_blocks, int(budget))
        evaluator.set_counts(evaluator.counts_at(order, count))
        memory = evaluator.prefix_bytes[count]
        started = time.perf_counter()
        with torch.no_grad():
            ppl = perplexity(evaluator.model, tokenizer, text, max_windows=args.max_windows, progress=False)
            result = {"artifact": str(args.artifact), "budget_bytes": int(budget), "memory_bytes": memory,
                      "bits_per_param": round(8 * (memory - evaluator.prefix_bytes[0]) / params, 4), "blocks_loaded": count,
                      "ppl": ppl.ppl, "ppl_detail": ppl.to_dict()}
            if args.zeroshot:
                tasks = {t: str(Path(args.zeroshot) / f"{t}.jsonl") for t in TASKS}
                result["tasks"] = evaluate_tasks(evaluator.model, tokenizer, tasks, batch_size=args.batch_size,
                                                 limit=args.limit, progress=False)
        result["seconds"] = round(time.perf_counter() - started, 1)
        result["machine"], result["commit"] = machine(), git_commit()
        target.write_text(json.dumps(result, indent=1) + "\n")
        print(f"[{args.label} @ {tag}] {memory / 1e6:.2f} MB, {result['bits_per_param']:.2f} bits: ppl {ppl.ppl:.2f}"
              + (f", zero-shot {result['tasks']['average']:.3f}" if "tasks" in result else ""), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
