"""SmolLM2-135M on the CPU end to end: greedy decode tokens/s and prefill time, BitStack against float.

    python -m benchmarks.cpu.decode ARTIFACT [--bits 3,4] [--dtypes bfloat16,float32]
        [--paths native] [--threads 2] [--batch 1] [--tokens 32] [--prefill 64] [--rounds 3] [--stat median]
        [--out benchmarks/results/cpu/decode.json]

Contenders, all in memory at once and measured in interleaved rounds (each round runs every
contender in turn): the float model in each of ``--dtypes``, and the artifact loaded at each of
``--bits`` (budget = base bytes + bits × decomposed parameters / 8) computing in each dtype, on
each of ``--paths``:

* ``native``: the default CPU path (the native lookup-table kernel for up to 16 tokens, the
  native rebuild of Ŵ + F.linear above; bitstack.native);
* ``lut``: the PyTorch lookup tables through embedding_bag (``BITSTACK_NATIVE=0`` while it runs);
* ``rebuild``: every call rebuilds Ŵ (natively) and calls F.linear (``lut_max_tokens = 0``).

Decode: greedy generation after a 9-token prompt, ``--batch`` copies of it at once (each decode
step then computes ``--batch`` tokens per linear; tok/s counts every sequence's tokens).  "decode tok/s" is the steady state:
(time to generate 1 + ``--tokens`` tokens − time to generate 1) / ``--tokens``, so the prompt's
forward and what a generate call does once (e.g. the first step's logits) cancel out;
"generate tok/s" is ``--tokens`` / the time of one whole generate call.  Prefill: one forward of a
``--prefill``-token prompt.  The table
shows the median (``--stat min``: minimum) over rounds and ratios against each float dtype.  Decode speed does not depend on
the artifact's calibration (only on its shapes and block counts), so a quickly compressed
artifact is as good as a carefully calibrated one here.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from contextlib import contextmanager

import torch

from benchmarks.cpu.common import STAT_HELP, STATS, load_average, threads_note
from benchmarks.resultfile import write_result

PROMPT = "The history of the river valley begins"


@contextmanager
def _path(model, path: str):
    """Run ``model`` on one CPU path (module docstring)."""
    from bitstack.runtime.linear import LUT_MAX_TOKENS, BitStackLinear

    old = os.environ.get("BITSTACK_NATIVE")
    layers = [m for m in model.modules() if isinstance(m, BitStackLinear)]
    for m in layers:
        m.lut_max_tokens = 0 if path == "rebuild" else LUT_MAX_TOKENS
    if path == "lut":
        os.environ["BITSTACK_NATIVE"] = "0"
    try:
        yield
    finally:
        for m in layers:
            m.lut_max_tokens = LUT_MAX_TOKENS
        if path == "lut":
            if old is None:
                os.environ.pop("BITSTACK_NATIVE", None)
            else:
                os.environ["BITSTACK_NATIVE"] = old


def generate_s(model, ids, tokens: int) -> float:
    with torch.no_grad():
        began = time.perf_counter()
        model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=0)
    return time.perf_counter() - began


def prefill_s(model, ids) -> float:
    with torch.no_grad():
        began = time.perf_counter()
        model(ids)
    return time.perf_counter() - began


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("artifact")
    parser.add_argument("--bits", default="3,4", help="budgets in bits per decomposed parameter")
    parser.add_argument("--dtypes", default="bfloat16,float32", help="compute dtypes of float and BitStack models")
    parser.add_argument("--paths", default="native", help="native, lut and/or rebuild (module docstring)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1, help="sequences decoded at once")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--prefill", type=int, default=64, help="prompt length of the prefill measurement (0: none)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stat", choices=sorted(STATS), default="median", help=STAT_HELP)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import bitstack
    from bitstack.models.source import load_float_model
    from bitstack.native.planes import native_isa
    from bitstack.runtime.budget import base_bytes_at
    from bitstack.runtime.report import memory_report

    torch.set_num_threads(args.threads)
    isa = native_isa()
    tokenizer = bitstack.load_tokenizer(args.artifact)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids.repeat(args.batch, 1)
    long_ids = torch.randint(100, 20000, (1, args.prefill), generator=torch.Generator().manual_seed(0))
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    contenders = {}  # name -> (model, path, memory MB, bits/param)
    base = load_float_model("smollm2-135m").model.eval()
    for dtype in dtypes:
        model = copy.deepcopy(base).to(dtype)
        size = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6
        contenders[f"float {dtype}".replace("torch.", "")] = (model, None, size, 16.0 if dtype != torch.float32 else 32.0)
    del base
    probe = bitstack.load(args.artifact, device="cpu")
    manifest = probe.bitstack.manifest
    del probe
    for bits in (float(b) for b in args.bits.split(",")):
        for dtype in dtypes:  # the same decomposed bits in every dtype (the base weights take the dtype's bytes)
            budget = base_bytes_at(manifest, dtype) + int(bits * manifest.decomposed_params() / 8)
            model = bitstack.load(args.artifact, budget, device="cpu", dtype=dtype)
            report = memory_report(model)
            for path in args.paths.split(","):
                name = f"{bits:g} bits {dtype} {path}".replace("torch.", "")
                contenders[name] = (model, path, report["memory_bytes"] / 1e6, report["bits_per_param"])
    load_before = load_average()
    print(f"native kernel: {isa}; {threads_note(args.threads)}; torch {torch.__version__}; load {load_before}")
    for model, path, _, _ in contenders.values():  # warm-up (first calls build tables, caches)
        with _path(model, path) if path else _nullpath():
            generate_s(model, ids, 4)
    decode = {name: [] for name in contenders}
    whole = {name: [] for name in contenders}
    prefill = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, (model, path, _, _) in contenders.items():
            with _path(model, path) if path else _nullpath():
                one, more = generate_s(model, ids, 1), generate_s(model, ids, 1 + args.tokens)
                decode[name].append(args.batch * args.tokens / (more - one))
                whole[name].append(args.batch * (1 + args.tokens) / more)
                if args.prefill:
                    prefill[name].append(prefill_s(model, long_ids))
    floats = [n for n in contenders if n.startswith("float")]
    columns = ["setting", "memory (MB)", "bits/param", "decode tok/s"] + [f"vs {f}" for f in floats]
    columns += ["generate tok/s"] + [f"generate vs {f}" for f in floats]
    columns += ([f"prefill {args.prefill} tok (ms)"] + [f"prefill time / {f}" for f in floats]) if args.prefill else []
    def rate(values):  # the stat of the times, as a rate (min time = max rate)
        return 1.0 / STATS[args.stat]([1.0 / v for v in values])

    def time_of(values):
        return STATS[args.stat](values)

    rows = []
    for name, (_, _, size, bpp) in contenders.items():
        tps = rate(decode[name])
        row = [name, round(size, 1), bpp, round(tps, 2)] + [round(tps / rate(decode[f]), 2) for f in floats]
        gen = rate(whole[name])
        row += [round(gen, 2)] + [round(gen / rate(whole[f]), 2) for f in floats]
        if args.prefill:
            ms = time_of(prefill[name]) * 1e3
            row += [round(ms, 1)] + [round(ms / (time_of(prefill[f]) * 1e3), 2) for f in floats]
        rows.append(row)
    load_after = load_average()
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    print(f"load average before {load_before}, after {load_after}")
    if args.out:
        notes = (f"SmolLM2-135M, greedy, batch {args.batch}, {args.tokens} new tokens after a {ids.shape[1]}-token prompt; prefill: one "
                 f"forward of {args.prefill} tokens. Native kernel {isa}; {threads_note(args.threads)}. "
                 f"{args.stat.capitalize()} (of times) over {args.rounds} interleaved rounds. Load average before {load_before}, after {load_after}. Decode speed "
                 f"depends on the artifact's shapes and block counts, not on its calibration.")
        write_result(args.out, title="CPU: SmolLM2-135M decode and prefill, BitStack vs float", topic="cpu",
                     columns=columns, rows=rows, notes=notes,
                     extra={"decode_tps": decode, "generate_tps": whole, "prefill_s": prefill, "isa": isa, "batch": args.batch,
                            "threads": args.threads, "load_before": load_before,
                            "load_after": load_after})
    return 0


@contextmanager
def _nullpath():
    yield


if __name__ == "__main__":
    raise SystemExit(main())
