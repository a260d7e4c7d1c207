"""End-to-end decode speed of a Llama-3-8B-shaped BitStack model on the GPU.

    PYTHONPATH=src python -m benchmarks.decode.e2e --build /tmp/e2e.bstk --layers 8 --bits 3,4

Builds (``--build``, with ``python -m benchmarks.common.synthetic_artifact``, ``--codec planes`` (the default,
nearest signs) or ``avd``) or reuses (``--artifact``) an artifact of a random Llama with
Llama-3-8B widths (4096 hidden, 14336 MLP, GQA 32/8, vocabulary 128256), then, batch 1, greedy,
float16 compute:

* **fp16**: ``LlamaForCausalLM`` with the same config and random fp16 weights on the GPU;
* **kernels**: ``bitstack.load`` at ~``bits`` bits per decomposed parameter (CUDA: every
  ``BitStackLinear`` stores its blocks packed and runs the Triton kernels);
* **pure PyTorch**: the same loaded model switched to the reference path (``set_kernels(model,
  False)``: Ŵ rebuilt in every call).

Decode tokens/s is measured two ways, after warm-up:

* ``generate``: eager ``model.generate`` (dynamic cache), rate = (T−1) / (t(T) − t(1)) so that the
  prompt's prefill is excluded; Python and launch overhead included;
* ``graph``: one decode step (static cache, next token = argmax written in place) captured in a
  CUDA graph and replayed T times (no launch gaps; how a serving stack would run it).  Checked
  first: the replayed tokens must equal the eager steps' tokens.

Before timing, the kernel path's logits are compared with the pure-PyTorch path's on the same
loaded weights (relative error, 1-token decode kernel and 16-token prefill), and
``bitstack.memory_bytes(model)`` is checked against the manifest's prefix bytes after the load,
after a live grow (3 → 4 bits, repacked in place) and after shrinking back.

CPU dry run (tiny widths, Triton interpreter, no graphs):
    TRITON_INTERPRET=1 PYTHONPATH=src python -m benchmarks.decode.e2e --device cpu --build /tmp/t.bstk \
        --hidden 64 --intermediate 128 --layers 2 --vocab 256 --heads 4 --kv-heads 2 --tokens 4 --pure-tokens 2
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import bitstack
from bitstack.artifact.reader import ArtifactReader
from bitstack.runtime.budget import prefix_bytes_at
from bitstack.runtime.linear import BitStackLinear, set_kernels

ROOT = Path(__file__).resolve().parents[2]
KERNELS_ON: bool | None = None  # set_kernels value of the kernel path (True for the CPU dry run)


def log(*args) -> None:
    print(*args, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def generate_rate(model, ids: torch.Tensor, tokens: int, pad: int, repeats: int = 1) -> float:
    """Eager greedy decode tokens/s: (tokens − 1) / (t(tokens) − t(1)), after one warm-up.

    ``t(tokens)`` is the median of ``repeats`` runs (each logged), ``t(1)`` the best of two.
    """

    def run(n: int) -> float:
        sync(ids.device)
        began = time.perf_counter()
        model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=pad)
        sync(ids.device)
        return time.perf_counter() - began

    with torch.no_grad():
        run(2)  # warm-up (compiles kernels, fills caches)
        one = min(run(1) for _ in range(2))
        fulls = [run(tokens) for _ in range(repeats)]
        full = statistics.median(fulls)
    if repeats > 1:
        log(f"    generate {tokens} tokens: {', '.join(f'{t:.3f}' for t in fulls)} s; 1 token {one:.3f} s")
    return (tokens - 1) / max(full - one, 1e-9)


def greedy_tokens(model, ids: torch.Tensor, n: int, pad: int) -> list[int]:
    """The first ``n`` greedy tokens of ``model.generate`` after the prompt."""
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=pad)
    return out[0, ids.shape[1]:].tolist()


def static_decode(model, ids: torch.Tensor, steps: int, check: int) -> dict:
    """Decode with a static cache; on CUDA also as a captured graph, checked and timed.

    Returns ``{"eager_tokens", "graph_tokens", "graph_tok_s"}`` (the graph entries only on CUDA).
    """
    from transformers import StaticCache

    device = ids.device
    result: dict = {}
    cache = StaticCache(config=model.config, max_cache_len=ids.shape[1] + max(steps, check) + 8)
    with torch.no_grad():
        out = model(input_ids=ids, past_key_values=cache, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)  # (1, 1), updated in place by every step
        position = torch.full((1, 1), ids.shape[1], dtype=torch.long, device=device)
        del out

        def step() -> None:
            logits = model(input_ids=token, position_ids=position, past_key_values=cache, use_cache=True).logits
            token.copy_(logits[:, -1:].argmax(-1))
            position.add_(1)

        state = [t for layer in cache.layers for t in (layer.keys, layer.values, layer.cumulative_length)]
        state += [token, position]
        saved = [t.clone() for t in state]

        def restore() -> None:
            for t, s in zip(state, saved):
                t.copy_(s)

        eager = [int(token)]  # the prefill's token, then one per step
        for _ in range(check):
            step()
            eager.append(int(token))
        result["eager_tokens"] = eager
        restore()
        if device.type != "cuda":
            return result
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):
                step()
        torch.cuda.current_stream(device).wait_stream(side)
        restore()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        restore()
        replayed = [int(token)]
        for _ in range(check):
            graph.replay()
            replayed.append(int(token))
        result["graph_tokens"] = replayed
        times = []
        for _ in range(3):
            restore()
            torch.cuda.synchronize(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(steps):
                graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        result["graph_tok_s"] = steps / statistics.median(times)
        result["graph_times_s"] = times
        del graph
    return result


def attempt(label: str, fn, default=None):
    """Run ``fn()``; on an exception log it and return ``default`` (one failed part must not cost the run)."""
    try:
        return fn()
    except Exception:  # noqa: BLE001 - a benchmark reports and goes on
        import traceback

        log(f"  FAILED: {label}\n{traceback.format_exc()}")
        return default


def blocks_per_kind(model) -> dict[str, float]:
    """Mean loaded blocks per weight, by projection name (q_proj, …)."""
    kinds: dict[str, list[int]] = {}
    for name, module in model.named_modules():
        if isinstance(module, BitStackLinear):
            kinds.setdefault(name.rsplit(".", 1)[-1], []).append(len(module.blocks))
    return {k: round(sum(v) / len(v), 2) for k, v in sorted(kinds.items())}


def check_memory(model, label: str) -> dict:
    state = model.bitstack
    resident = bitstack.memory_bytes(model)
    expected = state.prefix_bytes[state.loaded]
    packed = [m for m in state.modules.values() if m.packed is not None]
    in_sync = all(m.packed.num_blocks == len(m.blocks) for m in packed)
    ok = resident == expected and in_sync
    log(f"  memory [{label}]: memory_bytes {resident} == prefix_bytes {expected}: {resident == expected}; "
        f"packed layers {len(packed)}/{len(state.modules)}, in sync: {in_sync}")
    if not ok:
        raise SystemExit(f"memory accounting check failed after {label}")
    return {"label": label, "memory_bytes": resident, "prefix_bytes": expected, "packed_layers": len(packed)}


def validate(model, ids: torch.Tensor) -> dict:
    """Kernel-path logits vs the pure-PyTorch path's on the same weights (1 and all prompt tokens)."""
    with torch.no_grad():
        fast = {n: model(ids[:, :n]).logits for n in (1, ids.shape[1])}
        set_kernels(model, False)
        slow = {n: model(ids[:, :n]).logits for n in (1, ids.shape[1])}
        set_kernels(model, KERNELS_ON)
    errs = {f"{n}_tokens": rel_err(fast[n], slow[n]) for n in fast}
    log(f"  kernel vs pure-PyTorch logits, relative error: {errs}")
    return errs


def measure_bitstack(model, ids, args, pad: int, label: str) -> dict:
    row = {"setting": label, "bits_per_param": None}
    from bitstack.runtime.report import memory_report

    report = memory_report(model)
    row.update(memory_bytes=report["memory_bytes"], bits_per_param=report["bits_per_param"],
               blocks=report["blocks_loaded"], blocks_per_kind=blocks_per_kind(model))
    log(f"  {label}: {report['memory_bytes'] / 1e9:.3f} GB, {report['bits_per_param']:.3f} bits/param, "
        f"blocks per weight {row['blocks_per_kind']}")
    row["rel_err"] = validate(model, ids)
    began = time.perf_counter()
    row["generate_tok_s"] = generate_rate(model, ids, args.tokens, pad, args.repeats)
    log(f"  kernels generate: {row['generate_tok_s']:.1f} tok/s ({time.perf_counter() - began:.1f} s)")
    graph = attempt("static-cache decode / CUDA graph", lambda: static_decode(model, ids, args.tokens, args.check), {})
    row.update(graph)
    if "eager_tokens" in graph:
        row["static_matches_generate"] = graph["eager_tokens"] == greedy_tokens(model, ids, args.check + 1, pad)
        log(f"  static-cache steps == generate's greedy tokens: {row['static_matches_generate']}")
    if "graph_tok_s" in graph:
        row["graph_tokens_match"] = graph["graph_tokens"] == graph["eager_tokens"]
        log(f"  kernels graph: {graph['graph_tok_s']:.1f} tok/s; replay tokens == eager step tokens: "
            f"{row['graph_tokens_match']}")
    set_kernels(model, False)
    began = time.perf_counter()
    pure = attempt("pure-PyTorch generate", lambda: generate_rate(model, ids, args.pure_tokens, pad))
    if pure is not None:
        row["pure_generate_tok_s"] = pure
        log(f"  pure-PyTorch generate: {pure:.2f} tok/s ({time.perf_counter() - began:.1f} s)")
    set_kernels(model, KERNELS_ON)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--artifact", help="an existing artifact")
    where.add_argument("--build", metavar="PATH", help="build a synthetic artifact here first")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--intermediate", type=int, default=14336)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--niter", type=int, default=8, help="blocks per weight in the built artifact")
    parser.add_argument("--codec", choices=("planes", "avd"), default="planes", help="codec of the built artifact")
    parser.add_argument("--bits", default="3,4", help="budgets, bits per decomposed parameter (first two: grow test)")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens timed (kernels, fp16)")
    parser.add_argument("--pure-tokens", type=int, default=8, help="new tokens timed on the pure-PyTorch path")
    parser.add_argument("--repeats", type=int, default=3, help="timed generate runs (median)")
    parser.add_argument("--prompt", type=int, default=16, help="prompt tokens (random ids)")
    parser.add_argument("--check", type=int, default=8, help="graph replay tokens compared with eager steps")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", help="write all measurements here")
    args = parser.parse_args()
    device = torch.device(args.device)
    global KERNELS_ON
    KERNELS_ON = None if device.type == "cuda" else True  # CPU: Triton's interpreter (TRITON_INTERPRET=1)
    if device.type == "cpu":  # the tests' interpreter set-up (NumPy >= 2.3 shim), loaded by path
        import importlib.util

        spec = importlib.util.spec_from_file_location("_kernel_test_setup", ROOT / "tests/triton_interpreter.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.setup()
    results: dict = {"args": vars(args)}
    versions = {"torch": torch.__version__, "python": platform.python_version()}
    for name in ("transformers", "triton"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        versions["gpu"] = f"{props.name}, {props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB"
    results["machine"] = versions
    log(f"machine: {versions}")

    path = args.artifact
    if args.build:
        path = args.build
        began = time.perf_counter()
        cmd = [sys.executable, "-m", "benchmarks.common.synthetic_artifact", "-o", path, "--layers", str(args.layers),
               "--hidden", str(args.hidden), "--intermediate", str(args.intermediate), "--heads", str(args.heads),
               "--kv-heads", str(args.kv_heads), "--vocab", str(args.vocab), "--niter", str(args.niter),
               "--codec", args.codec, "--device", args.device]
        log("build:", " ".join(cmd))
        subprocess.run(cmd, check=True, cwd=ROOT)
        results["build_s"] = time.perf_counter() - began
        log(f"built in {results['build_s']:.1f} s")
    with ArtifactReader(path) as reader:
        manifest = reader.manifest
    prefix = prefix_bytes_at(manifest, torch.float16)
    params = manifest.decomposed_params()
    bits = [float(b) for b in args.bits.split(",")]
    floor = prefix[manifest.floor_blocks]
    budgets = {b: max(floor, prefix[0] + int(b * params / 8)) for b in bits}  # tiny dry runs: floor
    log(f"artifact {path}: {len(manifest.stack)} blocks, {params / 1e9:.3f} G decomposed params, "
        f"base {prefix[0] / 1e9:.3f} GB (fp16), floor {prefix[manifest.floor_blocks] / 1e9:.3f} GB, "
        f"full {prefix[-1] / 1e9:.3f} GB")

    g = torch.Generator().manual_seed(0)
    vocab = manifest.model["config"]["vocab_size"]
    ids = torch.randint(4, vocab, (1, args.prompt), generator=g).to(device)
    rows = []
    memory_checks = []

    # ---- BitStack: first budget, live grow to the second, shrink back ----------------------
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    began = time.perf_counter()
    model = bitstack.load(path, budgets[bits[0]], device=device, dtype=torch.float16)
    set_kernels(model, KERNELS_ON)
    sync(device)
    load_s = time.perf_counter() - began
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    log(f"loaded at {bits[0]:g} bits in {load_s:.1f} s (peak allocated {peak})")
    memory_checks.append(check_memory(model, f"load {bits[0]:g} bits"))
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    config = copy.deepcopy(model.config)
    first = measure_bitstack(model, ids, args, pad, f"BitStack {bits[0]:g} bits")
    first.update(load_s=load_s, peak_allocated=peak)
    rows.append(first)
    with torch.no_grad():
        logits_first = model(ids).logits
    for b in bits[1:]:
        report = bitstack.resize(model, budgets[b])
        log(f"resized to {b:g} bits in place: {report}")
        memory_checks.append(check_memory(model, f"grow to {b:g} bits"))
        row = measure_bitstack(model, ids, args, pad, f"BitStack {b:g} bits (grown in place)")
        row["resize_s"] = report.seconds
        rows.append(row)
    if len(bits) > 1:
        report = bitstack.resize(model, budgets[bits[0]])
        log(f"resized back to {bits[0]:g} bits: {report}")
        memory_checks.append(check_memory(model, f"shrink to {bits[0]:g} bits"))
        with torch.no_grad():
            err = rel_err(model(ids).logits, logits_first)
        log(f"  logits after grow + shrink vs the first load: relative error {err:.2e}")
        results["regrow_rel_err"] = err
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # ---- fp16 reference ----------------------------------------------------------------------
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        dense = AutoModelForCausalLM.from_config(config).to(torch.float16).eval()
    dense_bytes = sum(p.numel() * p.element_size() for p in dense.parameters())
    row = {"setting": "fp16 (transformers)", "memory_bytes": dense_bytes, "bits_per_param": 16.0}
    row["generate_tok_s"] = generate_rate(dense, ids, args.tokens, pad, args.repeats)
    log(f"  fp16 generate: {row['generate_tok_s']:.1f} tok/s")
    row.update(attempt("fp16 static-cache decode / CUDA graph", lambda: static_decode(dense, ids, args.tokens, args.check), {}))
    if "eager_tokens" in row:
        row["static_matches_generate"] = row["eager_tokens"] == greedy_tokens(dense, ids, args.check + 1, pad)
        log(f"  static-cache steps == generate's greedy tokens: {row['static_matches_generate']}")
    if "graph_tok_s" in row:
        row["graph_tokens_match"] = row["graph_tokens"] == row["eager_tokens"]
        log(f"  fp16 graph: {row['graph_tok_s']:.1f} tok/s; replay tokens == eager: {row['graph_tokens_match']}")
    rows.insert(0, row)
    del dense

    results.update(rows=rows, memory_checks=memory_checks)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    base_gen = rows[0]["generate_tok_s"]
    base_graph = rows[0].get("graph_tok_s")
    cfg = manifest.model["config"]
    log(f"\n{cfg['num_hidden_layers']} layers (hidden {cfg['hidden_size']}, MLP {cfg['intermediate_size']}, vocab {vocab}), "
        f"batch 1, greedy, "
        f"fp16 compute, {args.tokens} new tokens ({args.pure_tokens} on the pure-PyTorch path), prompt {args.prompt}")
    log("| setting | weights (GB) | bits/param | generate tok/s | vs fp16 | graph tok/s | vs fp16 | pure-PyTorch generate tok/s |")
    log("|---|---|---|---|---|---|---|---|")
    for r in rows:
        graph = r.get("graph_tok_s")
        gtxt = f"{graph:.1f} | {graph / base_graph:.2f}×" if graph and base_graph else "– | –"
        pure = f"{r['pure_generate_tok_s']:.2f}" if "pure_generate_tok_s" in r else "–"
        log(f"| {r['setting']} | {r['memory_bytes'] / 1e9:.3f} | {r['bits_per_param']:.2f} | {r['generate_tok_s']:.1f} | "
            f"{r['generate_tok_s'] / base_gen:.2f}× | {gtxt} | {pure} |")


if __name__ == "__main__":
    main()
