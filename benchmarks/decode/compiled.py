"""Decode speed through transformers' public API, eager and compiled, BitStack against fp16.

    PYTHONPATH=src python -m benchmarks.decode.compiled --build /tmp/c.bstk --layers 8 --bits 3,4 --json raw.json
    python -m benchmarks.decode.compiled --report raw.json --out benchmarks/results/decode/compiled_h100.json

Builds (``--build``: ``benchmarks.common.synthetic_artifact``, codec planes) or reuses
(``--artifact``) a random Llama with Llama-3-8B widths, then, greedy, float16, for each
``--batch`` size:

* **eager**: ``model.generate`` (dynamic cache);
* **compiled**: ``model.generate`` with ``cache_implementation="static"``, where transformers
  compiles the decode step (``torch.compile``, mode ``reduce-overhead``: CUDA graphs); BitStack's
  linears are the ``bitstack::`` custom operators (``bitstack.kernels.ops``).

Rates are (T−1) / (t(T) − t(1)) after a warm-up generate (which compiles), so the prompt's
prefill is excluded; each is measured ``--rounds`` times, fp16 and BitStack alternating.  Checked
in the run, before timing: the kernel path's logits against the pure-PyTorch path's, the compiled
tokens against the eager tokens (batch 1), and after a resize (grow to the second budget, timed)
the compiled tokens against eager ones again.  ``--overhead``: host µs per linear call (eager,
no sync, GPU idle in between is not counted: the host is the bottleneck at one token) for the
BitStack linear and ``F.linear`` of the same shape, with a profile of the former.

``--report`` turns the raw JSON of a run into a result file (``benchmarks/resultfile.py``) with
the run's machine, command and commit (``--commit`` of the run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.decode.e2e import attempt, check_memory, log, rel_err, sync

ROOT = Path(__file__).resolve().parents[2]


def rate(model, ids, tokens: int, pad: int, compiled: bool) -> float:
    """Greedy decode tokens/s, (tokens − 1) / (t(tokens) − t(1)), ``compiled``: static cache."""
    kwargs = dict(do_sample=False, pad_token_id=pad)
    if compiled:
        kwargs["cache_implementation"] = "static"

    def run(n: int) -> float:
        sync(ids.device)
        began = time.perf_counter()
        with torch.no_grad():
            model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kwargs)
        sync(ids.device)
        return time.perf_counter() - began

    one = min(run(1) for _ in range(2))
    return (tokens - 1) / max(run(tokens) - one, 1e-9)


def tokens_of(model, ids, n: int, pad: int, compiled: bool) -> list[list[int]]:
    kwargs = dict(do_sample=False, pad_token_id=pad, max_new_tokens=n, min_new_tokens=n)
    if compiled:
        kwargs["cache_implementation"] = "static"
    with torch.no_grad():
        return model.generate(ids, **kwargs)[:, ids.shape[1]:].tolist()


def warm(model, ids, tokens: int, pad: int, compiled: bool) -> float:
    """One generate of ``tokens`` (compiles, records graphs, sizes the static cache); seconds."""
    began = time.perf_counter()
    tokens_of(model, ids, tokens, pad, compiled)
    sync(ids.device)
    return time.perf_counter() - began


def host_overhead(module, x: torch.Tensor, calls: int = 300) -> float:
    """Host µs per call of ``module(x)`` (the GPU queue never drains at one token)."""
    with torch.no_grad():
        for _ in range(20):
            module(x)
        sync(x.device)
        began = time.perf_counter()
        for _ in range(calls):
            module(x)
        host = (time.perf_counter() - began) / calls * 1e6
        sync(x.device)
    return host


def overhead(model, device) -> dict:
    """Host µs per call of one BitStack linear of each shape against F.linear, and a profile."""
    import cProfile
    import io
    import pstats

    from bitstack.runtime.linear import BitStackLinear

    out: dict = {}
    seen = set()
    for name, module in model.named_modules():
        if not isinstance(module, BitStackLinear) or (module.out_features, module.in_features) in seen:
            continue
        seen.add((module.out_features, module.in_features))
        x = torch.randn(1, 1, module.in_features, device=device, dtype=torch.float16)
        dense = torch.nn.Linear(module.in_features, module.out_features, bias=False, device=device, dtype=torch.float16)
        out[name.rsplit(".", 1)[-1]] = {"bitstack_us": host_overhead(module, x), "F.linear_us": host_overhead(dense, x),
                                        "blocks": len(module.blocks)}
        if len(seen) == 1:
            prof = cProfile.Profile()
            with torch.no_grad():
                prof.enable()
                for _ in range(200):
                    module(x)
                prof.disable()
            text = io.StringIO()
            pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(14)
            out["profile"] = text.getvalue()[-3500:]
    return out


def validate(model, ids) -> dict:
    from bitstack.runtime.linear import set_kernels

    with torch.no_grad():
        fast = {n: model(ids[:1, :n]).logits for n in (1, 4, ids.shape[1])}
        set_kernels(model, False)
        slow = {n: model(ids[:1, :n]).logits for n in fast}
        set_kernels(model, None)
    return {f"{n}_tokens": rel_err(fast[n], slow[n]) for n in fast}


def measure(label: str, model, ids_by_batch: dict, args, pad: int, results: dict) -> None:
    """Eager and compiled rates of ``model`` for every batch size, ``args.rounds`` times."""
    for batch, ids in ids_by_batch.items():
        for compiled in (False, True):
            key = f"{label}|batch {batch}|{'compiled' if compiled else 'eager'}"
            first = attempt(key + " warm-up", lambda: warm(model, ids, args.tokens, pad, compiled))
            if first is None:
                continue
            rates = []
            for _ in range(args.rounds):
                r = attempt(key, lambda: rate(model, ids, args.tokens, pad, compiled))
                if r is not None:
                    rates.append(r)
            results["rates"][key] = {"tok_s": rates, "warmup_s": first}
            log(f"  {key}: {', '.join(f'{r:.1f}' for r in rates)} tok/s (warm-up {first:.1f} s)")


def measure_fp16(config: dict, ids_by_batch: dict, args, pad: int, results: dict) -> None:
    """The fp16 baseline: transformers' model of the same config, random weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = dict(config)
    config = AutoConfig.for_model(config.pop("model_type"), **config)
    torch.manual_seed(0)
    with torch.device("cuda"):
        dense = AutoModelForCausalLM.from_config(config).to(torch.float16).eval()
    measure("fp16", dense, ids_by_batch, args, pad, results)
    del dense
    torch.cuda.empty_cache()
    torch._dynamo.reset()


def run(args) -> None:
    import bitstack
    from bitstack.artifact.reader import ArtifactReader
    from bitstack.runtime.budget import prefix_bytes_at
    from bitstack.runtime.report import memory_report

    device = torch.device("cuda")
    results: dict = {"args": vars(args), "rates": {}, "checks": {}, "commit": args.commit}
    props = torch.cuda.get_device_properties(device)
    import transformers
    import triton

    results["machine"] = (f"{props.name}, {props.multi_processor_count} SMs; torch {torch.__version__}; "
                          f"triton {triton.__version__}; transformers {transformers.__version__}")
    log(results["machine"])
    path = args.artifact or args.build
    if args.build:
        began = time.perf_counter()
        subprocess.run([sys.executable, "-m", "benchmarks.common.synthetic_artifact", "-o", path, "--layers",
                        str(args.layers), "--vocab", str(args.vocab), "--niter", str(args.niter), "--device", "cuda"],
                       check=True, cwd=ROOT)
        results["build_s"] = time.perf_counter() - began
        log(f"built in {results['build_s']:.0f} s")
    with ArtifactReader(path) as reader:
        manifest = reader.manifest
    prefix = prefix_bytes_at(manifest, torch.float16)
    params = manifest.decomposed_params()
    bits = [float(b) for b in args.bits.split(",")]
    budgets = {b: max(prefix[manifest.floor_blocks], prefix[0] + int(b * params / 8)) for b in bits}
    g = torch.Generator().manual_seed(0)
    vocab = manifest.model["config"]["vocab_size"]
    batches = [int(b) for b in args.batch.split(",")]
    ids_by_batch = {b: torch.randint(4, vocab, (b, args.prompt), generator=g).to(device) for b in batches}
    one = ids_by_batch.get(1, next(iter(ids_by_batch.values()))[:1])

    pad = 0
    measure_fp16(manifest.model["config"], ids_by_batch, args, pad, results)  # first: the baseline of every ratio
    model = bitstack.load(path, budgets[bits[0]], device=device, dtype=torch.float16)
    results["checks"]["memory"] = [check_memory(model, f"load {bits[0]:g} bits")]
    results["checks"]["kernel_vs_pure_rel_err"] = validate(model, one)
    log(f"  kernel vs pure-PyTorch logits: {results['checks']['kernel_vs_pure_rel_err']}")
    if args.overhead:
        results["overhead"] = attempt("overhead", lambda: overhead(model, device), {})
        log(json.dumps({k: v for k, v in results["overhead"].items() if k != "profile"}))
        log(results["overhead"].get("profile", ""))
    eager_tokens = tokens_of(model, one, args.check, pad, False)
    compiled_tokens = attempt("compiled tokens", lambda: tokens_of(model, one, args.check, pad, True))
    results["checks"][f"compiled_equals_eager_{bits[0]:g}"] = compiled_tokens == eager_tokens
    log(f"  compiled tokens == eager tokens at {bits[0]:g} bits: {compiled_tokens == eager_tokens}")
    for i, b in enumerate(bits):
        if i:
            report = bitstack.resize(model, budgets[b])
            results["checks"][f"resize_to_{b:g}_s"] = report.seconds
            results["checks"]["memory"].append(check_memory(model, f"resize to {b:g} bits"))
            eager_tokens = tokens_of(model, one, args.check, pad, False)
            compiled_tokens = attempt("compiled tokens", lambda: tokens_of(model, one, args.check, pad, True))
            results["checks"][f"compiled_equals_eager_{b:g}"] = compiled_tokens == eager_tokens
            log(f"  resized to {b:g} bits in {report.seconds:.2f} s; compiled == eager: {compiled_tokens == eager_tokens}")
        rep = memory_report(model)
        results.setdefault("bits_per_param", {})[f"{b:g}"] = rep["bits_per_param"]
        measure(f"BitStack {b:g} bits", model, ids_by_batch, args, pad, results)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    print_table(results)


def table_rows(results: dict) -> list[list]:
    rates = results["rates"]
    rows = []
    for key, value in rates.items():
        label, batch, mode = key.split("|")
        if label == "fp16" or not value["tok_s"]:
            continue
        base = rates.get(f"fp16|{batch}|{mode}", {}).get("tok_s")
        med = statistics.median(value["tok_s"])
        ratio = f"{med / statistics.median(base):.2f}×" if base else "–"
        runs = " / ".join(f"{r:.1f}" for r in value["tok_s"])
        base_runs = " / ".join(f"{r:.1f}" for r in base) if base else "–"
        rows.append([label, batch, mode, runs, base_runs, ratio])
    return rows


COLUMNS = ["setting", "batch", "generate", "BitStack tok/s (rounds)", "fp16 tok/s (rounds)", "vs fp16 (medians)"]


def print_table(results: dict) -> None:
    log("| " + " | ".join(COLUMNS) + " |")
    log("|" + "---|" * len(COLUMNS))
    for row in table_rows(results):
        log("| " + " | ".join(str(c) for c in row) + " |")


def report(args) -> None:
    from benchmarks.resultfile import write_result

    raw = json.loads(Path(args.report).read_text())
    a = raw["args"]
    command = (f"python -m benchmarks.decode.compiled --build {a['build']} --layers {a['layers']} --bits {a['bits']} "
               f"--batch {a['batch']} --tokens {a['tokens']} --rounds {a['rounds']}" + (" --overhead" if a["overhead"] else ""))
    checks = raw["checks"]
    notes = (f"A random Llama with Llama-3-8B widths (hidden 4096, MLP 14336, GQA 32/8, vocabulary {a['vocab']}), "
             f"{a['layers']} of its 32 layers, codec planes (groups of 128), {a['niter']} blocks per weight. Greedy, float16, "
             f"a {a['prompt']}-token prompt, {a['tokens']} new tokens; rate (T−1)/(t(T)−t(1)) after a warm-up generate. "
             "`eager`: `model.generate`; `compiled`: `model.generate(..., cache_implementation=\"static\")`, which "
             "transformers compiles (torch.compile, reduce-overhead: CUDA graphs). fp16 is transformers' model of the "
             "same config measured in the same run; each rate measured in "
             f"{a['rounds']} rounds. Bits per parameter: {raw.get('bits_per_param')}. Checked in the run: kernel vs "
             f"pure-PyTorch logits, relative error {checks.get('kernel_vs_pure_rel_err')}; compiled tokens equal eager "
             f"tokens: { {k: v for k, v in checks.items() if k.startswith('compiled_equals')} }; resize seconds: "
             f"{ {k: round(v, 2) for k, v in checks.items() if k.startswith('resize_to')} }; memory_bytes = prefix "
             "bytes after the load and the resize.")
    extra = {k: raw[k] for k in ("rates", "checks", "overhead", "build_s") if k in raw}
    path = write_result(args.out, title=args.title, topic="decode", columns=COLUMNS, rows=table_rows(raw),
                        notes=notes, extra=extra, command=command, machine_line=raw["machine"])
    data = json.loads(path.read_text())
    data["commit"] = raw["commit"]  # the commit that ran on the GPU machine
    path.write_text(json.dumps(data, indent=1) + "\n")
    log(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--artifact", help="an existing artifact")
    where.add_argument("--build", metavar="PATH", help="build a synthetic artifact here first")
    where.add_argument("--report", metavar="RAW", help="write a result file from a run's raw JSON")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--niter", type=int, default=5, help="blocks per weight in the built artifact")
    parser.add_argument("--bits", default="3,4", help="budgets, bits per decomposed parameter (loaded, then grown)")
    parser.add_argument("--batch", default="1", help="batch sizes")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens timed")
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="timed generates per setting")
    parser.add_argument("--check", type=int, default=8, help="tokens compared, compiled against eager")
    parser.add_argument("--overhead", action="store_true", help="host µs per linear call, and a profile")
    parser.add_argument("--commit", default="unknown", help="the commit that runs (recorded in the raw JSON)")
    parser.add_argument("--json", help="raw measurements")
    parser.add_argument("--out", help="--report: the result file")
    parser.add_argument("--title", default="Decode through transformers' generate, eager and compiled (GPU)")
    args = parser.parse_args()
    if args.report:
        report(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
