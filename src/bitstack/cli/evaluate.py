"""``bitstack eval``: perplexity and zero-shot accuracy of an artifact at a memory budget."""

from __future__ import annotations

import argparse

from bitstack.cli.common import artifact_arguments, print_json, read_text
from bitstack.errors import InputError


def run(args: argparse.Namespace) -> int:
    from bitstack.runtime.loader import load, load_tokenizer
    from bitstack.runtime.report import memory_report

    if not args.ppl and not args.tasks:
        raise InputError("nothing to evaluate: pass --ppl TEXT_FILE and/or --tasks NAME=PATH,...")
    text = read_text(args.ppl) if args.ppl else None
    tasks = None
    if args.tasks:
        from bitstack.evaluation.zeroshot import parse_task_spec

        try:
            tasks = parse_task_spec(args.tasks)
        except ValueError as err:
            raise InputError(str(err)) from err
    model = load(args.artifact, args.memory, device=args.device, dtype=args.dtype)
    tokenizer = load_tokenizer(args.artifact)
    result = {"artifact": str(args.artifact), **memory_report(model)}
    if text is not None:
        from bitstack.evaluation.perplexity import perplexity

        ppl = perplexity(model, tokenizer, text, seqlen=args.seqlen, max_windows=args.max_windows,
                         batch_size=args.batch_size, progress=not args.quiet)
        result["ppl"] = ppl.ppl
        result["ppl_detail"] = ppl.to_dict()
    if tasks:
        from bitstack.evaluation.zeroshot import evaluate_tasks

        result["tasks"] = evaluate_tasks(model, tokenizer, tasks, batch_size=args.batch_size, limit=args.limit,
                                         progress=not args.quiet)
    if args.json:
        print_json(result)
    else:
        for key, value in result.items():
            if key not in ("ppl_detail",):
                print(f"{key}: {value}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("eval", help="perplexity / zero-shot at a budget", description="Evaluate an artifact at a memory budget.")
    artifact_arguments(p)
    p.add_argument("--ppl", metavar="TEXT_FILE", help="perplexity on this UTF-8 text (e.g. WikiText-2 test)")
    p.add_argument("--seqlen", type=int, default=2048, help="perplexity window length (default: 2048)")
    p.add_argument("--max-windows", type=int, default=None, help="score only the first N windows")
    p.add_argument("--tasks", default=None, help="zero-shot tasks, e.g. arc_easy=PATH,piqa=PATH")
    p.add_argument("--limit", type=int, default=None, help="first N examples per task")
    p.add_argument("--batch-size", type=int, default=1, help="sequences per forward pass (default: 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
