"""Perplexity of an artifact's stack re-ordered level by level (``bitstack.core.ordering.leveled``),
at two memories (RTN w3 g64's and w4 g64's), on the first 4 WikiText-2 windows of 2048 tokens,
without rewriting the artifact.  Used for issue 7's table (benchmarks/RESULTS.md).

    python benchmarks/leveled_check.py ART.bstk
"""
import torch, math, sys, json
from pathlib import Path
from bitstack.sorting.measure import StackEvaluator
from bitstack.sorting.resort import stack_order
from bitstack.evaluation.curve import evaluate_order
from bitstack.calibration.samples import tokenize_text
from bitstack.evaluation.perplexity import token_windows
from bitstack.runtime.loader import load_tokenizer
path = sys.argv[1]
ev = StackEvaluator(path, device="cpu", batch_size=1)
tok = load_tokenizer(path)
win = token_windows(tokenize_text(tok, Path(sys.argv[2] if len(sys.argv) > 2 else "../shared/data/wikitext2_test.txt").read_text(), special_tokens=True), 2048, 4)
order = stack_order(ev.manifest)
from bitstack.sorting.strategies import leveled as make_leveled
leveled = make_leveled(order)
for label, o in (("leveled", leveled),):
    for p in evaluate_order(ev, o, [100446464, 113924864], win, label=label, progress=False):
        print(label, p.memory_bytes, p.bits_per_param, p.ppl, flush=True)
