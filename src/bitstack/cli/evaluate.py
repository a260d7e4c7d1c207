"""``bitstack eval``: perplexity and zero-shot accuracy of an artifact at a memory budget."""

from __future__ import annotations

import argparse

from bitstack.cli.common import artifact_arguments, print_budget_note, print_json, read_text, settings_options
from bitstack.errors import InputError
from bitstack.evaluation.perplexity import PerplexitySettings
from bitstack.evaluation.zeroshot import ZeroShotSettings


def run(args: argparse.Namespace) -> int:
    from bitstack.artifact.opening import open_artifact
    from bitstack.config import resolve_dtype
    from bitstack.devices import resolve_device
    from bitstack.runtime.budget import budget_bytes, check_floor, prefix_bytes_at
    from bitstack.evaluation.perplexity import check_seqlen
    from bitstack.runtime.loader import load, load_tokenizer
    from bitstack.runtime.report import memory_report

    if not args.ppl and not args.tasks:
        raise InputError("nothing to evaluate: pass --ppl TEXT_FILE and/or --tasks NAME=PATH,...")
    text = read_text(args.ppl) if args.ppl else None
    tasks = None
    if args.tasks:  # every task file is read and checked before the model loads
        from bitstack.evaluation.zeroshot import load_task, parse_task_spec

        tasks = parse_task_spec(args.tasks)
        for task, path in tasks.items():
            load_task(task, path, args.limit)
    resolve_device(args.device)  # the checks of load() that come first, then the window against the context
    with open_artifact(args.artifact, verify=False) as reader:
        m = reader.manifest
        dtype = resolve_dtype(args.dtype, m.compression.get("dtype", "bfloat16"))
        check_floor(m, prefix_bytes_at(m, dtype), budget_bytes(m, args.memory, dtype))
        if text is not None:
            check_seqlen(args.seqlen, m.model["config"], option="--seqlen")
    model = load(args.artifact, args.memory, device=args.device, dtype=args.dtype)
    if not args.quiet:
        print_budget_note(model)
    tokenizer = load_tokenizer(args.artifact)
    result = {"artifact": str(args.artifact), **memory_report(model)}
    if text is not None:
        from bitstack.evaluation.perplexity import perplexity

        ppl = perplexity(model, tokenizer, text, seqlen=args.seqlen, max_windows=args.max_windows,
                         batch_size=args.batch_size or PerplexitySettings.batch_size, progress=not args.quiet)
        result["ppl"] = ppl.ppl
        result["ppl_detail"] = ppl.to_dict()
    if tasks:
        from bitstack.evaluation.zeroshot import evaluate_tasks

        result["tasks"] = evaluate_tasks(model, tokenizer, tasks, batch_size=args.batch_size or ZeroShotSettings.batch_size,
                                         limit=args.limit, progress=not args.quiet)
    if args.json:
        print_json(result)
    else:
        print("\n".join(result_lines(result)))
    return 0


def result_lines(result: dict) -> list[str]:
    """The evaluation result as text lines: the memory, the perplexity and a table of the tasks."""
    from bitstack.memory import format_bytes

    lines = [f"{result['artifact']}: {format_bytes(result['memory_bytes'])} resident, {result['blocks_loaded']} of "
             f"{result['blocks_total']} blocks, {result['bits_per_param']} bits/param"]
    if "ppl" in result:
        d = result["ppl_detail"]
        lines.append(f"perplexity {result['ppl']:.4f} ({d['windows']} windows of {d['seqlen']} tokens, {d['tokens']} scored)")
    if "tasks" in result:
        lines.append(f"{'task':<16}{'acc':>8}{'± stderr':>10}{'acc_norm':>10}{'n':>7}")
        for task, m in result["tasks"]["tasks"].items():
            norm = f"{m['acc_norm']:.4f}" if "acc_norm" in m else "-"
            lines.append(f"{task:<16}{m['acc']:>8.4f}{m['acc_stderr']:>10.4f}{norm:>10}{m['n']:>7}")
        lines.append(f"{'average':<16}{result['tasks']['average']:>8.4f}{'':>10}{result['tasks']['average_acc_norm']:>10.4f}")
    return lines


def register(sub) -> None:
    p = sub.add_parser("eval", help="perplexity / zero-shot at a budget", description="Evaluate an artifact at a memory budget.")
    artifact_arguments(p, auto=False)
    p.add_argument("--ppl", metavar="TEXT_FILE", help="perplexity on this UTF-8 text (e.g. WikiText-2 test)")
    settings_options(p, PerplexitySettings, skip=("batch_size",))
    p.add_argument("--tasks", default=None, help="zero-shot tasks, e.g. arc_easy=PATH,piqa=PATH")
    settings_options(p, ZeroShotSettings, skip=("batch_size",))
    p.add_argument("--batch-size", type=int, default=None, help="sequences per forward pass (default: "
                   f"{PerplexitySettings.batch_size} for perplexity, {ZeroShotSettings.batch_size} for zero-shot)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
