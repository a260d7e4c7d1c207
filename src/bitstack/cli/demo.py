"""``bitstack demo``: compress the embedded SmolLM2-135M offline and compare quality at three budgets."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from bitstack.demo import run_demo

    run_demo(output=args.output, ppl_file=args.ppl, nsamples=args.nsamples, seqlen=args.seqlen,
             eval_seqlen=args.eval_seqlen, eval_windows=args.eval_windows, device=args.device, progress=not args.quiet)
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", help="compress the embedded SmolLM2 and show quality at three budgets (offline)",
                       description="The main job: compress the embedded SmolLM2-135M offline and compare quality at three budgets.")
    p.add_argument("--output", default="smollm2-135m.bstk", help="artifact directory (default: smollm2-135m.bstk; reused if present)")
    p.add_argument("--ppl", default=None, help="also score perplexity on this text file (e.g. WikiText-2 test)")
    p.add_argument("--nsamples", type=int, default=32, help="calibration sequences (default: 32)")
    p.add_argument("--seqlen", type=int, default=512, help="calibration sequence length (default: 512)")
    p.add_argument("--eval-seqlen", type=int, default=512, help="evaluation window (default: 512)")
    p.add_argument("--eval-windows", type=int, default=8, help="evaluation windows (default: 8)")
    p.add_argument("--device", default=None, help="default: cuda if available")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
