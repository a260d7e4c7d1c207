"""Perplexity of an artifact's stack re-ordered level by level, without rewriting the artifact.

The order is ``bitstack.core.ordering.leveled`` applied to the artifact's own order (block i of
every weight before any weight's block i+1, the artifact's ranking inside each level); each
budget loads the longest prefix of that order that fits, evaluated in memory on the first
``--max-windows`` windows of the test text.  Prints one line per budget: label, resident bytes,
bits/param, perplexity.

    python -m benchmarks.sorting.leveled_check ART.bstk --ppl ../shared/data/wikitext2_test.txt \\
        --memory 100446464,113924864
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("artifact")
    parser.add_argument("--ppl", default="../shared/data/wikitext2_test.txt", help="test text")
    parser.add_argument("--memory", default="100446464,113924864", help="budgets in bytes, comma-separated")
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--max-windows", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    from bitstack.sorting.resort import stack_order
    from bitstack.calibration.samples import tokenize_text
    from bitstack.core.ordering import leveled
    from bitstack.evaluation.curve import evaluate_order
    from bitstack.evaluation.perplexity import token_windows
    from bitstack.sorting.measure import StackEvaluator
    from bitstack.runtime.loader import load_tokenizer

    evaluator = StackEvaluator(args.artifact, device=args.device, batch_size=1)
    tokens = tokenize_text(load_tokenizer(args.artifact), Path(args.ppl).read_text(), special_tokens=True)
    windows = token_windows(tokens, args.seqlen, args.max_windows)
    order = leveled(stack_order(evaluator.manifest))
    budgets = [int(b) for b in args.memory.split(",") if b]
    for point in evaluate_order(evaluator, order, budgets, windows, label="leveled", progress=False):
        print("leveled", point.memory_bytes, point.bits_per_param, point.ppl, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
