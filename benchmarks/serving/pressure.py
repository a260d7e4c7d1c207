"""Serving under memory pressure: ``bitstack serve`` with N streaming clients while its memory
target halves and doubles in waves, against the float model at a fixed budget that fits it.

Every client sends streaming completions (``ignore_eos``, fixed ``max_tokens``) back to back.
A response counts as complete only if it ends with ``data: [DONE]``, finish_reason ``length``
and exactly ``max_tokens`` tokens; anything else is truncated, a 503 is a refusal, any other
status or an error chunk is a failure.  The engine's state is sampled every 0.1 s: weights,
weights + KV cache, and weights + KV reserve + working memory are each checked against the
target at every sample (on CUDA also ``torch.cuda.memory_allocated``).

Targets: ``--low`` defaults to the floor plus the KV and working memory of ``--clients``
requests (the smallest target under which requests in flight never exceed it); ``--high`` is
twice that.  With ``--cotenant SIZE`` (GPU) the target is ``auto`` instead, and a second
process allocates and frees SIZE bytes on the device every half ``--wave-period``.

The float phase (``--float smollm2-135m``) serves the float model at ``--float-memory``
(default: its weights plus the same KV and working memory) with the same load, and records
what the float model must refuse at the bitstack phase's targets.

    python -m benchmarks.serving.pressure /tmp/smol.bstk --clients 8 --duration 60 --float smollm2-135m
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serving.pressure", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("artifact", help="artifact directory")
    p.add_argument("--clients", type=int, default=8, help="concurrent streaming clients (default: 8; >= 32 on GPU)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load per phase (default: 60)")
    p.add_argument("--max-tokens", type=int, default=32, help="tokens per response (default: 32)")
    p.add_argument("--prompt-words", type=int, default=24, help="words per prompt (default: 24)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default: 0, greedy)")
    p.add_argument("--low", default=None, help="low target (default: floor + KV and working memory of the clients)")
    p.add_argument("--high", default=None, help="high target (default: twice the low one)")
    p.add_argument("--wave-period", type=float, default=10.0, help="seconds per low+high wave (default: 10)")
    p.add_argument("--cotenant", default=None, help="GPU: bytes a second process allocates and frees in waves; the "
                   "server then follows --memory auto")
    p.add_argument("--reserve", default="256MB", help="with --cotenant: the auto target's reserve (default: 256MB)")
    p.add_argument("--device", default=None, help="cpu, cuda … (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=("bfloat16", "float16", "float32"), help="compute dtype (default: the artifact's)")
    p.add_argument("--float", dest="float_model", default=None, help="float baseline: smollm2-135m, a .gguf or a model folder")
    p.add_argument("--float-memory", default=None, help="the float model's fixed target (default: its weights + the "
                   "clients' KV and working memory)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's; 1 on a crowded CPU)")
    p.add_argument("--out", default=None, help="result JSON (default: benchmarks/results/serving/pressure_DEVICE.json)")
    p.add_argument("--png", default=None, help="memory and bits/param over time (default: the result's name .png)")
    return p.parse_args(argv)


def committed_for(engine, clients: int, prompt_tokens: int, max_tokens: int) -> int:
    """KV reserve + working memory of ``clients`` requests of this shape (the serving rule)."""
    from bitstack.serve.budget import Request

    return engine._committed([Request(prompt_tokens, max_tokens)] * clients)


def round_up(size: int) -> int:
    """``size`` rounded up to a whole kB (to whole MB above 100 MB)."""
    step = 1_000_000 if size > 100_000_000 else 1000
    return -(-size // step) * step


def longest_prompt(tokenizer, words: int, clients: int) -> int:
    from benchmarks.serving.load import prompts

    return max(len(tokenizer(p)["input_ids"]) for p in prompts(max(clients * 4, 16), words))


def plot(samples: list[dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] for s in samples]
    fig, (top, mid, low) = plt.subplots(3, 1, figsize=(9, 8), sharex=True, gridspec_kw={"height_ratios": [3, 2, 2]})
    mb = lambda key: [key(s) / 1e6 for s in samples]  # noqa: E731
    top.plot(t, mb(lambda s: s["target_bytes"]), "r--", label="target")
    top.plot(t, mb(lambda s: s["weight_resident_bytes"] + s["kv_reserved_bytes"] + s["working_bytes"]),
             color="tab:purple", label="weights + KV reserve + working")
    top.plot(t, mb(lambda s: s["weight_resident_bytes"] + s["kv_bytes"]), color="tab:green", label="weights + KV used")
    top.plot(t, mb(lambda s: s["weight_resident_bytes"]), color="tab:blue", label="weights")
    if "cuda_allocated_bytes" in samples[0]:
        top.plot(t, mb(lambda s: s["cuda_allocated_bytes"]), color="tab:gray", lw=0.8, label="torch.cuda allocated")
    top.set_ylabel("MB")
    top.legend(fontsize=8, loc="lower left")
    top.set_title(title, fontsize=10)
    mid.plot(t, [s["bits_per_param"] for s in samples], color="tab:orange")
    mid.set_ylabel("bits / param")
    low.plot(t, [s["tokens_per_second"] for s in samples], color="tab:cyan", label="tokens/s (last 5 s)")
    low.plot(t, [s["running"] for s in samples], color="tab:brown", label="running")
    low.plot(t, [s["queue_length"] for s in samples], color="tab:gray", label="queued")
    low.set_xlabel("seconds")
    low.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def row(name: str, target: str, clients: int, s: dict) -> list:
    over = max(s["samples_weights_over_target"], s["samples_weights_kv_over_target"], s["samples_accounted_over_target"],
               s.get("samples_cuda_allocated_over_target", 0))
    return [name, target, clients, s["requests"], s["completed"], s["refused_503"], s["failed"], s["truncated"],
            s["latency_p50_s"], s["latency_p99_s"], s["ttft_p50_s"], s["tokens_per_second"],
            f"{s['weights_min_bytes'] / 1e6:.1f}-{s['weights_max_bytes'] / 1e6:.1f}",
            f"{s['bits_min']:.2f}-{s['bits_max']:.2f}", f"{over}/{s['samples']}"]


COLUMNS = ["model", "memory target", "clients", "requests", "complete", "refused (503)", "failed", "truncated",
           "p50 latency s", "p99 latency s", "p50 TTFT s", "tokens/s", "weights MB", "bits/param",
           "samples over target"]


def main(argv=None) -> int:
    sys.path.insert(0, str(ROOT))
    args = parse_args(argv)
    import bitstack
    from benchmarks.resultfile import write_result
    from benchmarks.serving.load import run_phase
    from bitstack.errors import BitstackError
    from bitstack.memory import format_bytes, parse_memory
    from bitstack.serve.options import ServeOptions
    from bitstack.serve.server import build

    import os

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    base = dict(device=args.device, dtype=args.dtype, max_batch=args.clients, max_queue=4 * args.clients,
                queue_timeout=600.0, port=0, max_tokens_limit=max(args.max_tokens, 16))
    server = build(args.artifact, ServeOptions(memory="1TB", **base))
    engine = server.engine
    prompt_tokens = longest_prompt(bitstack.load_tokenizer(args.artifact), args.prompt_words, args.clients)
    need = committed_for(engine, args.clients, prompt_tokens, args.max_tokens)
    low = parse_memory(args.low) if args.low else round_up(engine.weights.floor + need)
    high = parse_memory(args.high) if args.high else 2 * low
    device = engine.device.type
    cotenant = parse_memory(args.cotenant) if args.cotenant else 0
    if cotenant:
        waves, target_text = None, f"auto (reserve {args.reserve}), co-tenant {format_bytes(cotenant)} in waves"
    else:
        waves, target_text = (high, low), f"{format_bytes(low)} <-> {format_bytes(high)}"
    print(f"bitstack: floor {format_bytes(engine.weights.floor)}, full {format_bytes(engine.weights.full)}, "
          f"{args.clients} clients need {format_bytes(need)} of KV + working memory; targets {target_text}", flush=True)
    phase = run_phase(server, clients=args.clients, duration=args.duration, max_tokens=args.max_tokens,
                      prompt_words=args.prompt_words, waves=waves, wave_period=args.wave_period,
                      temperature=args.temperature, cotenant_bytes=cotenant,
                      auto_reserve=args.reserve if cotenant else None)
    summary = phase["summary"]
    print("bitstack:", summary, flush=True)
    rows = [row("bitstack " + Path(args.artifact).name, target_text, args.clients, summary)]
    extra = {"bitstack": summary, "low_bytes": low, "high_bytes": high, "need_bytes": need, "prompt_tokens_max": prompt_tokens,
             "floor_bytes": engine.weights.floor, "full_bytes": engine.weights.full, "max_tokens": args.max_tokens,
             "wave_period_s": args.wave_period, "duration_s": args.duration}
    compression = engine.weights.stack.manifest.compression
    notes = ["artifact compressed with " + ", ".join(f"{k} {compression.get(k)}" for k in
                                                    ("calib", "nsamples", "seqlen", "codec", "niter", "signs", "clip", "sort")),
             f"{args.clients} streaming clients, {args.max_tokens} tokens each (ignore_eos), prompts of "
             f"{args.prompt_words} words (<= {prompt_tokens} tokens); the target halves and doubles every "
             f"{args.wave_period / 2:g} s" if waves else f"{args.clients} clients; auto target with a co-tenant"]
    if args.float_model:
        from bitstack.models.source import load_float_model

        dtype = next(p.dtype for p in engine.model.parameters() if p.is_floating_point())  # the served compute dtype
        loaded = load_float_model(args.float_model, dtype=dtype)
        model = loaded.model.to(engine.device).eval()
        weights = bitstack.memory_bytes(model)
        fixed = parse_memory(args.float_memory) if args.float_memory else round_up(weights + need)
        try:
            build(args.artifact, ServeOptions(memory=str(high), model_name="float", **base), model=model,
                  tokenizer=loaded.tokenizer).close()
            refusal = "fits the high target"
        except BitstackError as err:
            refusal = str(err)
        notes.append(f"float model at the bitstack targets: {refusal} (so every request is refused there)")
        float_server = build(args.artifact, ServeOptions(memory=str(fixed), model_name="float", **base), model=model,
                             tokenizer=loaded.tokenizer)
        float_phase = run_phase(float_server, clients=args.clients, duration=args.duration, max_tokens=args.max_tokens,
                                prompt_words=args.prompt_words, waves=None, wave_period=args.wave_period,
                                temperature=args.temperature)
        print("float:", float_phase["summary"], flush=True)
        rows.append(row(f"float {args.float_model} ({format_bytes(weights)})", format_bytes(fixed), args.clients,
                        float_phase["summary"]))
        extra.update(float=float_phase["summary"], float_weights_bytes=weights, float_memory_bytes=fixed,
                     float_at_high=refusal)
    extra["load_average_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    extra["torch_threads"] = torch.get_num_threads()
    notes.append(f"{torch.get_num_threads()} torch thread(s); 1-minute load average {load_before:.1f} at start, "
                 f"{os.getloadavg()[0]:.1f} at the end")
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / "serving" / f"pressure_{device}.json"
    png = Path(args.png) if args.png else out.with_suffix(".png")
    extra["png"] = str(png.relative_to(ROOT)) if png.is_relative_to(ROOT) else str(png)
    # the result first: its commit is read before this run rewrites a committed PNG (which would mark it dirty)
    write_result(out, title=f"bitstack serve under memory pressure ({device})", topic="serving", columns=COLUMNS,
                 rows=rows, notes="; ".join(notes), extra=extra)
    plot(phase["samples"], png, f"bitstack serve under memory waves ({args.clients} clients, {device})")
    print(f"wrote {out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
