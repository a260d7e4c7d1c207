"""The ``bitstack`` command line: compress, info, eval, generate, demo.

``compress``'s options are generated from :class:`bitstack.config.CompressConfig`, so the CLI and
the Python API share one set of defaults.  Errors the user can fix print one line and exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from bitstack.config import CompressConfig
from bitstack.errors import BitstackError, InputError
from bitstack.serve.cli import add_parser as add_serve_parser


def _config_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("compression settings (defaults from CompressConfig)")
    for f in dataclasses.fields(CompressConfig):
        if f.name == "version":
            continue
        kind = type(f.default)
        group.add_argument(
            "--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=f.default,
            choices=f.metadata.get("choices"), help=f"{f.metadata['help']} (default: {f.default})",
        )


def config_from_args(args: argparse.Namespace) -> CompressConfig:
    return CompressConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(CompressConfig) if f.name != "version"})


def _print_json(data: dict) -> None:
    print(json.dumps(data, indent=2, sort_keys=False))


def _read_text(path: str) -> str:
    file = Path(path)
    if not file.is_file():
        raise InputError(f"text file {path} does not exist")
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{path} is not UTF-8 text") from err


# ---- commands -----------------------------------------------------------------------------
def cmd_compress(args: argparse.Namespace) -> int:
    import time

    from bitstack.compressor import compress

    started = time.perf_counter()
    path = compress(args.model, args.output, config_from_args(args), device=args.device, overwrite=args.overwrite,
                    progress=not args.quiet)
    seconds = time.perf_counter() - started
    from bitstack.artifact.reader import ArtifactReader

    with ArtifactReader(path, verify=False) as reader:
        m = reader.manifest
        print(f"wrote {path} in {seconds:.1f} s: {len(m.stack)} blocks, floor {m.floor_bytes} bytes, full {m.full_bytes} bytes")
    return 0


def info_dict(path: str) -> dict:
    from bitstack.artifact.reader import ArtifactReader, artifact_size_on_disk

    with ArtifactReader(path, verify=False) as reader:
        m = reader.manifest
        params = m.decomposed_params()
        return {
            "path": str(path),
            "format_version": m.format_version,
            "library_version": m.library_version,
            "model_source": m.model["source"],
            "model_type": m.model["config"]["model_type"],
            "num_weights": len(m.weights),
            "num_blocks": len(m.stack),
            "floor_blocks": m.floor_blocks,
            "decomposed_params": params,
            "base_bytes": m.base_bytes,
            "floor_bytes": m.floor_bytes,
            "full_bytes": m.full_bytes,
            "floor_bits_per_param": round(8 * (m.floor_bytes - m.base_bytes) / params, 4),
            "full_bits_per_param": round(8 * (m.full_bytes - m.base_bytes) / params, 4),
            "disk_bytes": artifact_size_on_disk(path),
            "codec": "planes" if any(w.group_size for w in m.weights) else "avd",
            "niter": m.compression.get("niter"),
            "rank": m.compression.get("rank"),
            "group_size": m.compression.get("group_size"),
            "compression": m.compression,
        }


def cmd_info(args: argparse.Namespace) -> int:
    info = info_dict(args.artifact)
    if args.json:
        _print_json(info)
        return 0
    from bitstack.memory import format_bytes

    print(f"{info['path']}: {info['model_type']} from {info['model_source']} (format v{info['format_version']})")
    shape = f"groups of {info['group_size']}" if info["codec"] == "planes" else f"rank {info['rank']}"
    print(f"  {info['num_weights']} decomposed weights, {info['num_blocks']} blocks (codec {info['codec']}, "
          f"niter {info['niter']}, {shape})")
    print(f"  floor {format_bytes(info['floor_bytes'])} ({info['floor_bits_per_param']} bits/param), "
          f"full {format_bytes(info['full_bytes'])} ({info['full_bits_per_param']} bits/param), "
          f"non-decomposed {format_bytes(info['base_bytes'])}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from bitstack.runtime.loader import load, load_tokenizer
    from bitstack.runtime.report import memory_report

    if not args.ppl and not args.tasks:
        raise InputError("nothing to evaluate: pass --ppl TEXT_FILE and/or --tasks NAME=PATH,...")
    text = _read_text(args.ppl) if args.ppl else None
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
        _print_json(result)
    else:
        for key, value in result.items():
            if key not in ("ppl_detail",):
                print(f"{key}: {value}")
    return 0


def _load_live(args: argparse.Namespace):
    """Load for generate/chat; with ``--memory auto`` start an AutoResizer that reports to stderr."""
    from bitstack.runtime.loader import load, load_tokenizer

    auto = None
    if args.memory == "auto":
        from bitstack.runtime.auto import AutoResizer

        model = load(args.artifact, _floor(args.artifact), device=args.device, dtype=args.dtype)

        def report(event) -> None:
            r = event.report
            print(f"[bitstack] {r.old_bytes / 1e6:.1f} MB -> {r.new_bytes / 1e6:.1f} MB ({r.new_blocks} blocks, "
                  f"{event.free_bytes / 1e6:.0f} MB free, {r.seconds * 1e3:.0f} ms)", file=sys.stderr)

        auto = AutoResizer(model, reserve=args.reserve, hysteresis=args.hysteresis, on_change=report).start()
    else:
        model = load(args.artifact, args.memory, device=args.device, dtype=args.dtype)
    return model, load_tokenizer(args.artifact), auto


def _floor(path: str) -> int:
    from bitstack.artifact.reader import ArtifactReader

    with ArtifactReader(path, verify=False) as reader:
        return reader.manifest.floor_bytes


def _generate(model, tokenizer, ids, args) -> "torch.Tensor":
    import torch

    sample = args.temperature > 0
    with torch.no_grad():
        return model.generate(**ids, max_new_tokens=args.max_new_tokens, do_sample=sample,
                              temperature=args.temperature if sample else None, top_p=None, top_k=None,
                              pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)


def cmd_generate(args: argparse.Namespace) -> int:
    if not args.prompt.strip():
        raise InputError("--prompt is empty: give the text to continue")
    model, tokenizer, auto = _load_live(args)
    try:
        ids = tokenizer(args.prompt, return_tensors="pt").to(model.bitstack.device)
        out = _generate(model, tokenizer, ids, args)
    finally:
        if auto is not None:
            auto.stop()
    print(tokenizer.decode(out[0], skip_special_tokens=True))
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    """Read user turns from stdin; ``/memory SIZE`` resizes, ``/size`` reports, ``/quit`` ends."""
    from bitstack.runtime.budget import memory_bytes

    model, tokenizer, auto = _load_live(args)
    history: list[dict] = []
    interactive = sys.stdin.isatty()
    try:
        while True:
            if interactive:
                print("you> ", end="", flush=True)
            line = sys.stdin.readline()
            if not line or line.strip() == "/quit":
                break
            text = line.strip()
            if not text:
                continue
            if text == "/size":
                print(f"[bitstack] {memory_bytes(model) / 1e6:.1f} MB resident, {model.bitstack.loaded} blocks")
                continue
            if text.startswith("/memory"):
                try:
                    report = model.bitstack.resize(text.split(maxsplit=1)[1] if " " in text else None)
                except BitstackError as err:
                    print(f"[bitstack] {err}")
                    continue
                print(f"[bitstack] {report.old_bytes / 1e6:.1f} MB -> {report.new_bytes / 1e6:.1f} MB "
                      f"({report.new_blocks} blocks, {report.seconds * 1e3:.1f} ms)")
                continue
            history.append({"role": "user", "content": text})
            if getattr(tokenizer, "chat_template", None):
                prompt = tokenizer.apply_chat_template(history, add_generation_prompt=True, tokenize=False)
            else:
                prompt = "\n".join(turn["content"] for turn in history) + "\n"
            ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.bitstack.device)
            out = _generate(model, tokenizer, ids, args)
            reply = tokenizer.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True).strip()
            history.append({"role": "assistant", "content": reply})
            print(f"bot> {reply}", flush=True)
    finally:
        if auto is not None:
            auto.stop()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from bitstack.demo import run_demo

    run_demo(output=args.output, ppl_file=args.ppl, nsamples=args.nsamples, seqlen=args.seqlen,
             eval_seqlen=args.eval_seqlen, eval_windows=args.eval_windows, device=args.device, progress=not args.quiet)
    return 0



def cmd_sort(args: argparse.Namespace) -> int:
    from bitstack.sorting import SortSettings, sort_artifact

    settings = SortSettings(val=args.val, val_windows=args.val_windows, val_seqlen=args.val_seqlen, batch_size=args.batch_size,
                            greedy_step=args.greedy_step, greedy_max_age=args.greedy_max_age, seed=args.seed,
                            device=args.device, dtype=args.dtype)
    result = sort_artifact(args.artifact, args.strategy, settings, shard_mb=args.shard_mb, use_cache=not args.no_cache,
                           progress=not args.quiet)
    if args.json:
        _print_json(result.info)
    else:
        info = result.info
        print(f"sorted {args.artifact} by {args.strategy} in {info['seconds']} s "
              f"({info['forwards']} forward passes, {info['forward_equivalents']} full-forward equivalents)")
    return 0


def cmd_curve(args: argparse.Namespace) -> int:
    from bitstack.evaluation.curve import artifact_axes, measure_curve, read_series_csv, write_curve

    if (args.budgets is None) == (args.points is None):
        raise InputError("give the budgets to evaluate: --budgets 100MB,120MB,... or --points N")
    budgets = [b for b in args.budgets.split(",") if b.strip()] if args.budgets is not None else None
    if budgets is not None and not budgets:
        raise InputError("--budgets is empty: give a comma-separated list such as 100MB,120MB")
    extra = []
    for spec in args.series or []:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise InputError(f"--series {spec!r} must look like NAME=ARTIFACT")
        extra.append((name, path))
    csv_series = {}
    for file in args.series_csv or []:
        csv_series.update(read_series_csv(file))
    text = _read_text(args.ppl)
    options = dict(seqlen=args.seqlen, max_windows=args.max_windows, batch_size=args.batch_size, device=args.device,
                   dtype=args.dtype, progress=not args.quiet)
    label = args.label or Path(args.artifact).name
    series = {label: measure_curve(args.artifact, text, budgets=budgets, points=args.points, label=label, **options)}
    for name, path in extra:
        if name in series:
            raise InputError(f"series name {name!r} is used twice")
        series[name] = measure_curve(path, text, budgets=budgets, points=args.points, label=name, skip_below_floor=True, **options)
    for name, points in csv_series.items():
        if name in series:
            raise InputError(f"series name {name!r} of the CSV is used twice")
        series[name] = points
    base_bytes, params = artifact_axes(args.artifact, args.dtype)
    out = args.out or f"{str(args.artifact).rstrip('/')}-curve"
    meta = {"artifact": str(args.artifact), "ppl_file": args.ppl, "seqlen": args.seqlen, "max_windows": args.max_windows,
            "dtype": args.dtype, "series": [name for name, _ in extra], "series_csv": args.series_csv or []}
    paths = write_curve(series, out, base_bytes=base_bytes, params=params, title=args.title, meta=meta)
    if args.json:
        _print_json({"files": {k: str(v) for k, v in paths.items()},
                     "series": {k: [p.to_dict() for p in v] for k, v in series.items()}})
    else:
        for name, points in series.items():
            for p in points:
                bits = "" if p.bits_per_param is None else f"  {p.bits_per_param:6.2f} bits/param"
                print(f"{name}: {p.memory_bytes / 1e6:9.2f} MB{bits}  ppl {p.ppl:.3f}")
        print("wrote " + ", ".join(str(v) for v in paths.values()))
    return 0

# ---- parser -------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2), like the library's own errors."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bitstack", description="Compress an LLM once; load it at any memory budget.")
    parser.add_argument("--version", action="version", version=f"bitstack {__import__('bitstack').__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser, *, memory: bool = True) -> None:
        p.add_argument("artifact", help="artifact directory")
        if memory:
            p.add_argument("--memory", default=None, help="budget for resident weight bytes, e.g. 120MB, 1.5GiB, 123456; "
                           "'auto' (generate, chat) follows free memory (default: whole stack)")
            p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda if available)")
            p.add_argument("--dtype", default=None, choices=("bfloat16", "float16", "float32"), help="compute dtype (default: the artifact's)")

    p = sub.add_parser("compress", help="compress a model into an artifact", description="Compress a causal LM into a BitStack artifact.")
    p.add_argument("model", help="smollm2-135m (embedded), a local HF model folder, a .gguf file, or a Hugging Face id")
    p.add_argument("-o", "--output", required=True, help="artifact directory to write")
    p.add_argument("--device", default=None, help="where the math runs (default: cuda if available)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _config_options(p)
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("info", help="describe an artifact", description="Describe an artifact: sizes, floor, full stack.")
    common(p, memory=False)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("eval", help="perplexity / zero-shot at a budget", description="Evaluate an artifact at a memory budget.")
    common(p)
    p.add_argument("--ppl", metavar="TEXT_FILE", help="perplexity on this UTF-8 text (e.g. WikiText-2 test)")
    p.add_argument("--seqlen", type=int, default=2048, help="perplexity window length (default: 2048)")
    p.add_argument("--max-windows", type=int, default=None, help="score only the first N windows")
    p.add_argument("--tasks", default=None, help="zero-shot tasks, e.g. arc_easy=PATH,piqa=PATH")
    p.add_argument("--limit", type=int, default=None, help="first N examples per task")
    p.add_argument("--batch-size", type=int, default=1, help="sequences per forward pass (default: 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_eval)

    def live(p: argparse.ArgumentParser) -> None:
        p.add_argument("--max-new-tokens", type=int, default=50, help="tokens to generate (default: 50)")
        p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
        p.add_argument("--reserve", default="512MB", help="with --memory auto: memory to leave free (default: 512MB)")
        p.add_argument("--hysteresis", default="16MB", help="with --memory auto: dead band against resize churn (default: 16MB)")

    p = sub.add_parser("generate", help="generate text at a budget", description="Generate text from an artifact at a memory budget "
                       "(--memory auto: follow the device's free memory while generating).")
    common(p)
    p.add_argument("--prompt", required=True, help="text to continue")
    live(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="chat on stdin at a budget (resizable)", description="Chat with an artifact: one user turn per "
                       "stdin line; /memory SIZE resizes in place, /size reports, /quit ends (--memory auto follows free memory).")
    common(p)
    live(p)
    p.set_defaults(func=cmd_chat)

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
    p.set_defaults(func=cmd_demo)

    from bitstack.config import SORT_STRATEGIES

    p = sub.add_parser("sort", help="re-sort an artifact's universal order (no recompression)",
                       description="Compute a universal order and rewrite the artifact's stack and shards atomically. "
                                   "average/greedy measurements are saved in ARTIFACT.sortcache/ and resumed.")
    common(p, memory=False)
    p.add_argument("--strategy", required=True, choices=SORT_STRATEGIES, help="ordering strategy")
    p.add_argument("--val", default="self", help="validation text for fisher/average/greedy: a text file, or 'self' (sampled from the model; default)")
    p.add_argument("--val-windows", type=int, default=4, help="validation windows (default: 4)")
    p.add_argument("--val-seqlen", type=int, default=256, help="tokens per validation window (default: 256)")
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (default: 4)")
    p.add_argument("--greedy-step", type=int, default=8, help="greedy: blocks accepted per round (default: 8)")
    p.add_argument("--greedy-max-age", type=int, default=256, help="greedy: re-measure a gain older than this many blocks (default: 256)")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation windows and of random (default: 0)")
    p.add_argument("--shard-mb", type=float, default=None, help="shard size in MB (default: the artifact's)")
    p.add_argument("--device", default=None, help="cpu, cuda … (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=("bfloat16", "float16", "float32"), help="compute dtype (default: the artifact's)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write ARTIFACT.sortcache/")
    p.add_argument("--json", action="store_true", help="print the sort info as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_sort)

    p = sub.add_parser("curve", help="perplexity against memory at many budgets (CSV, JSON, PNG)",
                       description="Evaluate perplexity at a series of budgets; write OUT.csv, OUT.json and OUT.png.")
    common(p, memory=False)
    p.add_argument("--ppl", metavar="TEXT_FILE", required=True, help="UTF-8 text to score (e.g. WikiText-2 test)")
    p.add_argument("--budgets", default=None, help="comma-separated budgets, e.g. 100MB,120MB,150MB")
    p.add_argument("--points", type=int, default=None, help="N budgets spread evenly from the floor to the full stack")
    p.add_argument("--series", action="append", metavar="NAME=ARTIFACT", help="another artifact drawn on the same axes (repeatable)")
    p.add_argument("--series-csv", action="append", metavar="FILE", help="extra series from a CSV with columns label,memory_bytes,ppl (repeatable)")
    p.add_argument("--label", default=None, help="name of the main series (default: the artifact's folder name)")
    p.add_argument("--title", default=None, help="plot title")
    p.add_argument("--out", default=None, help="output prefix (default: ARTIFACT-curve)")
    p.add_argument("--seqlen", type=int, default=2048, help="perplexity window length (default: 2048)")
    p.add_argument("--max-windows", type=int, default=None, help="score only the first N windows")
    p.add_argument("--batch-size", type=int, default=1, help="windows per forward pass (default: 1)")
    p.add_argument("--device", default=None, help="cpu, cuda … (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=("bfloat16", "float16", "float32"), help="compute dtype (default: the artifact's)")
    p.add_argument("--json", action="store_true", help="print the points as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_curve)
    add_serve_parser(sub)
    return parser


# Numeric options of any command, checked before the command runs (CompressConfig checks its own).
_AT_LEAST_ONE = ("seqlen", "max_windows", "limit", "batch_size", "max_new_tokens", "eval_seqlen", "eval_windows",
                 "val_windows", "val_seqlen", "greedy_step", "greedy_max_age", "points")
_AT_LEAST_ZERO = ("temperature", "seed")


def _check_numbers(args: argparse.Namespace) -> None:
    import math

    if getattr(args, "command", None) == "compress":
        return
    for name in _AT_LEAST_ONE + _AT_LEAST_ZERO:
        value = getattr(args, name, None)
        least = 1 if name in _AT_LEAST_ONE else 0
        if value is not None and (not math.isfinite(value) or value < least):
            option = "--" + name.replace("_", "-")
            raise InputError(f"{option} must be {'a positive' if least else 'a non-negative'} number, got {value}")
    shard_mb = getattr(args, "shard_mb", None)
    if shard_mb is not None and not (math.isfinite(shard_mb) and shard_mb > 0):
        raise InputError(f"--shard-mb must be a positive number, got {shard_mb}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _check_numbers(args)
        return args.func(args)
    except BitstackError as err:
        message = " ".join(str(err).split())
        print(f"bitstack: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bitstack: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
