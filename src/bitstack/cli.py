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
    from bitstack.compressor import compress

    path = compress(args.model, args.output, config_from_args(args), device=args.device, overwrite=args.overwrite,
                    progress=not args.quiet)
    from bitstack.artifact.reader import ArtifactReader

    with ArtifactReader(path, verify=False) as reader:
        m = reader.manifest
        print(f"wrote {path}: {len(m.stack)} blocks, floor {m.floor_bytes} bytes, full {m.full_bytes} bytes")
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
            "niter": m.compression.get("niter"),
            "rank": m.compression.get("rank"),
            "compression": m.compression,
        }


def cmd_info(args: argparse.Namespace) -> int:
    info = info_dict(args.artifact)
    if args.json:
        _print_json(info)
        return 0
    from bitstack.memory import format_bytes

    print(f"{info['path']}: {info['model_type']} from {info['model_source']} (format v{info['format_version']})")
    print(f"  {info['num_weights']} decomposed weights, {info['num_blocks']} blocks (niter {info['niter']}, rank {info['rank']})")
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


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from bitstack.runtime.loader import load, load_tokenizer

    model = load(args.artifact, args.memory, device=args.device, dtype=args.dtype)
    tokenizer = load_tokenizer(args.artifact)
    ids = tokenizer(args.prompt, return_tensors="pt").to(model.bitstack.device)
    sample = args.temperature > 0
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=args.max_new_tokens, do_sample=sample,
                             temperature=args.temperature if sample else None, top_p=None, top_k=None,
                             pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    print(tokenizer.decode(out[0], skip_special_tokens=True))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from bitstack.demo import run_demo

    run_demo(output=args.output, ppl_file=args.ppl, nsamples=args.nsamples, seqlen=args.seqlen,
             eval_seqlen=args.eval_seqlen, eval_windows=args.eval_windows, device=args.device, progress=not args.quiet)
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
            p.add_argument("--memory", default=None, help="budget for resident weight bytes, e.g. 120MB, 1.5GiB, 123456 (default: whole stack)")
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

    p = sub.add_parser("generate", help="generate text at a budget", description="Generate text from an artifact at a memory budget.")
    common(p)
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=50, help="tokens to generate (default: 50)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.set_defaults(func=cmd_generate)

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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
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
