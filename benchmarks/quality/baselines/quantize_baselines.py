"""Quantization baselines for SmolLM2-135M, measured with real libraries.

One command per row: quantize the embedded SmolLM2-135M-Instruct with one method at one bit
width and group size, count its resident weight memory with bitstack's rule, evaluate WikiText-2
perplexity and the zero-shot tasks with bitstack's own evaluators, and append one JSON line to
``OUT.jsonl`` (the CSV ``OUT.csv`` is rewritten from all JSON lines after each row).

Methods (all asymmetric integer weights, contiguous groups along the input dimension, every
``nn.Linear`` of the decoder layers; embeddings, norms and the tied LM head stay bf16):

- ``float``: the bf16 model itself.
- ``rtn``:  llm-compressor ``QuantizationModifier`` (min-max observer, round to nearest), no data.
- ``gptq``: llm-compressor ``GPTQModifier`` (library defaults: block 128, dampening 0.01,
  actorder static), sequential pipeline, calibrated.
- ``awq``:  llm-compressor ``AWQModifier`` (library defaults: n_grid 20, duo_scaling True) followed
  by ``QuantizationModifier`` (min-max), calibrated.
- ``hqq``:  hqq ``HQQLinear`` with ``BaseQuantizeConfig(nbits, group_size)`` (axis 1, the
  library's half-quadratic optimisation on), data-free.

The model is bitstack's loader output (``bitstack.models.source.load_float_model``, fp32 GGUF
dequantization), cast to bfloat16: quantization, calibration and evaluation all run in bf16 on
``--device`` (CPU by default).
Calibration samples are ``bitstack.calibration.samples.text_file_samples`` (seed 0), the exact
token windows BitStack compresses with.

Run it with the venv described in README.md (llmcompressor pins its own transformers)::

    /work/venv-baselines/bin/python -m benchmarks.quality.baselines.quantize_baselines --method gptq --bits 4 --group 64

A row already in the output file (same method, bits, group, nsamples, seqlen, zero-shot limit and
window count) is skipped, so a queue of commands can be re-run after an interruption.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "src"))  # use this checkout's bitstack, whatever is installed

DATA = Path(os.environ.get("BITSTACK_SHARED_DATA", REPO.parent / "shared" / "data"))
TASKS = ("arc_easy", "arc_challenge", "piqa", "winogrande", "lambada_openai")
LABELS = {"float": "float (bf16)", "rtn": "RTN", "hqq": "HQQ", "gptq": "GPTQ", "awq": "AWQ"}
CSV_COLUMNS = ("label", "memory_bytes", "ppl", "bits_per_param", "nll", "method", "bits", "group", "memory_mb",
               "base_bytes", "weight_bytes", "scale_bytes", "zero_bytes", "quantized_params",
               *(f"{t}_acc" for t in TASKS), "zs_avg", "zs_avg_acc_norm", "zs_limit", "nsamples", "seqlen",
               "quantize_s", "ppl_s", "zs_s", "total_s", "library")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# Model, data, memory
# ---------------------------------------------------------------------------------------------


def load_model(device: str = "cpu"):
    """bitstack's embedded SmolLM2 (fp32 GGUF dequantization) cast to bf16 on ``device``, and its tokenizer."""
    from bitstack.models.source import load_float_model

    fm = load_float_model("smollm2-135m", dtype=torch.float32)
    model = fm.model.to(device=device, dtype=torch.bfloat16).eval()
    return model, fm.tokenizer


def quantized_linears(model) -> dict[str, torch.nn.Linear]:
    """The linears that BitStack decomposes: every nn.Linear inside the decoder layers."""
    return {name: mod for name, mod in model.named_modules()
            if isinstance(mod, torch.nn.Linear) and name.startswith("model.layers.")}


def base_bytes_of(model) -> tuple[int, int]:
    """(bytes of every non-quantized tensor at its loaded dtype, quantized parameter count),
    from the float model, counted with bitstack's ``memory_bytes`` (one count per storage, so the
    tied LM head is free; buffers such as rotary inv_freq included)."""
    from bitstack.runtime.budget import memory_bytes

    linears = quantized_linears(model)
    total = memory_bytes(model)
    linear_bytes = sum(m.weight.untyped_storage().nbytes() for m in linears.values())
    assert all(m.bias is None for m in linears.values()), "SmolLM2 linears have no bias"
    return total - linear_bytes, sum(m.weight.numel() for m in linears.values())


def calibration_windows(tokenizer, nsamples: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    from bitstack.calibration.samples import text_file_samples

    return text_file_samples(DATA / "calibration_wikipedia.txt", tokenizer, nsamples, seqlen, seed)


# ---------------------------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------------------------


def _scheme(bits: int, group: int):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    weights = QuantizationArgs(num_bits=bits, type="int", strategy="group", group_size=group,
                               symmetric=False, dynamic=False)
    return {"group_0": QuantizationScheme(targets=["Linear"], weights=weights)}


def _loader(windows: torch.Tensor):
    from torch.utils.data import DataLoader

    rows = [{"input_ids": w, "attention_mask": torch.ones_like(w)} for w in windows]
    return DataLoader(rows, batch_size=1, shuffle=False)


def quantize_llmcompressor(model, tokenizer, method: str, bits: int, group: int, windows: torch.Tensor | None) -> dict:
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier

    groups = _scheme(bits, group)
    if method == "rtn":
        recipe = [QuantizationModifier(config_groups=groups, ignore=["lm_head"], bypass_divisibility_checks=True)]
    elif method == "gptq":
        from llmcompressor.modifiers.gptq import GPTQModifier

        recipe = [GPTQModifier(config_groups=groups, ignore=["lm_head"], bypass_divisibility_checks=True)]
    elif method == "awq":
        from llmcompressor.modifiers.transform.awq import AWQModifier
        from llmcompressor.pipelines.cache import IntermediatesCache

        if not torch.accelerator.is_available():
            # llmcompressor 0.14's AWQ pins its cached activations (a speed hint for host-to-GPU
            # copies) unconditionally, and pinning raises without an accelerator.  On a CPU-only
            # machine pinning is meaningless, so make it a no-op; nothing else is changed.
            IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None

        recipe = [AWQModifier(), QuantizationModifier(config_groups=groups, ignore=["lm_head"], bypass_divisibility_checks=True)]
    else:
        raise ValueError(method)
    # oneshot re-reads the model's config.json from config.name_or_path to refuse already quantized
    # checkpoints; a GGUF's folder has none, so point it at a copy of the (float) config.
    config_dir = tempfile.mkdtemp(prefix="smollm2-config-")
    model.config.save_pretrained(config_dir)
    model.config._name_or_path = config_dir
    kwargs = {}
    if windows is not None:
        kwargs = dict(dataset=_loader(windows), num_calibration_samples=windows.shape[0],
                      max_seq_length=windows.shape[1], shuffle_calibration_samples=False)
    oneshot(model=model, tokenizer=tokenizer, recipe=recipe, **kwargs)
    return {"recipe": [repr(m) for m in recipe]}


def quantize_hqq(model, bits: int, group: int, device: str = "cpu") -> dict:
    from hqq.core.quantize import BaseQuantizeConfig, HQQBackend, HQQLinear

    config = BaseQuantizeConfig(nbits=bits, group_size=group)
    HQQLinear.set_backend(HQQBackend.PYTORCH)
    for name, linear in quantized_linears(model).items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, HQQLinear(linear, config, compute_dtype=torch.bfloat16, device=device))
    return {"quant_config": repr(config), "backend": "PYTORCH (dequantize, then matmul in bf16)"}


def hqq_to_dense(model) -> None:
    """Replace every HQQLinear by an nn.Linear holding ``HQQLinear.dequantize()`` (bf16).

    HQQ's PYTORCH backend computes ``x @ dequantize().T`` at every call; keeping the dequantized
    weight instead gives the same numbers without unpacking 210 weights in every forward pass
    on this 2-core CPU.  Call after :func:`hqq_linear_bytes`."""
    from hqq.core.quantize import HQQLinear

    for name, mod in list(model.named_modules()):
        if isinstance(mod, HQQLinear):
            weight = mod.dequantize().to(torch.bfloat16)
            dense = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=torch.bfloat16, device=weight.device)
            dense.weight = torch.nn.Parameter(weight, requires_grad=False)
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, dense)


# ---------------------------------------------------------------------------------------------
# Memory of the quantized linears, as each library stores them
# ---------------------------------------------------------------------------------------------


def llmcompressor_linear_bytes(model, bits: int, params: int) -> dict:
    """Packed weights at ``bits`` per parameter, plus the scale and zero-point tensors exactly as
    compressed-tensors writes them (``pack-quantized`` format: scales at the model dtype, zero
    points densely packed at ``bits`` into int32) — measured from a saved compressed checkpoint.
    Saving compresses the model in place, so call this after the evaluations."""
    from safetensors import safe_open

    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, save_compressed=True)
        fmt = json.loads((Path(tmp) / "config.json").read_text())["quantization_config"].get("format")
        parts = {"weight_packed": 0, "weight_scale": 0, "weight_zero_point": 0, "weight_shape": 0}
        for file in sorted(Path(tmp).glob("*.safetensors")):
            with safe_open(str(file), "pt") as f:
                for key in f.keys():
                    if not key.startswith("model.layers."):
                        continue
                    kind = key.rsplit(".", 1)[1]
                    if kind in parts:
                        t = f.get_tensor(key)
                        parts[kind] += t.numel() * t.element_size()
    ideal = bits * params // 8
    return {"weight_bytes": ideal, "scale_bytes": parts["weight_scale"], "zero_bytes": parts["weight_zero_point"],
            "saved_packed_bytes": parts["weight_packed"], "saved_shape_bytes": parts["weight_shape"], "format": fmt}


def hqq_linear_bytes(model, bits: int) -> dict:
    """Packed weights at ``bits`` per parameter plus HQQ's meta scale and zero (float, compute
    dtype, one of each per group), measured from the live HQQLinear modules."""
    from hqq.core.quantize import HQQLinear

    weight = scale = zero = packed = params = 0
    for mod in model.modules():
        if isinstance(mod, HQQLinear):
            n = math.prod(mod.meta["shape"])
            params += n
            weight += bits * n // 8
            packed += mod.W_q.numel() * mod.W_q.element_size()
            scale += mod.meta["scale"].numel() * mod.meta["scale"].element_size()
            zero += mod.meta["zero"].numel() * mod.meta["zero"].element_size()
    return {"weight_bytes": weight, "scale_bytes": scale, "zero_bytes": zero, "saved_packed_bytes": packed,
            "scale_dtype": str(next(m for m in model.modules() if isinstance(m, HQQLinear)).meta["scale"].dtype)}


# ---------------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------------


def row_key(row: dict) -> tuple:
    return (row["method"], row["bits"], row["group"], row["nsamples"], row["seqlen"], row["zs_limit"], row["max_windows"])


def existing_rows(jsonl: Path) -> list[dict]:
    if not jsonl.is_file():
        return []
    return [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]


def write_csv(rows: list[dict], path: Path) -> None:
    import csv

    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_COLUMNS})
    tmp.replace(path)


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "transformers", "llmcompressor", "compressed-tensors", "hqq", "accelerate"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", required=True, choices=tuple(LABELS))
    p.add_argument("--bits", type=int, default=16, help="weight bits (ignored for float)")
    p.add_argument("--group", type=int, default=64, help="group size along the input dimension (must divide 576 and 1536: 128 does not)")
    p.add_argument("--nsamples", type=int, default=128, help="calibration samples (gptq, awq)")
    p.add_argument("--seqlen", type=int, default=2048, help="calibration sample length and perplexity window")
    p.add_argument("--max-windows", type=int, default=None, help="WikiText-2 windows (default: all 148)")
    p.add_argument("--zs-limit", type=int, default=200, help="first N examples of each zero-shot task (0: all)")
    p.add_argument("--batch-size", type=int, default=16, help="zero-shot batch size")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda: where quantization and evaluation run")
    p.add_argument("--out", default="runs/quality/baselines",
                   help="output prefix: PREFIX.jsonl and PREFIX.csv (rows that `python -m benchmarks.quality.table` reads)")
    p.add_argument("--force", action="store_true", help="re-run a row already in the output")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    calibrated = args.method in ("gptq", "awq")
    bits = 16 if args.method == "float" else args.bits
    group = None if args.method == "float" else args.group
    jsonl, csv_path = Path(args.out + ".jsonl"), Path(args.out + ".csv")
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    row = {"method": args.method, "bits": bits, "group": group,
           "nsamples": args.nsamples if calibrated else 0, "seqlen": args.seqlen,
           "zs_limit": args.zs_limit or None, "max_windows": args.max_windows}
    rows = existing_rows(jsonl)
    if not args.force and any(row_key(r) == row_key(row) for r in rows):
        log(f"row {row_key(row)} already in {jsonl}: skipped")
        return 0

    t_start = time.perf_counter()
    model, tokenizer = load_model(args.device)
    base_bytes, qparams = base_bytes_of(model)
    log(f"loaded: base {base_bytes} bytes, {qparams} quantized parameters")

    t0 = time.perf_counter()
    info: dict = {}
    if args.method in ("rtn", "gptq", "awq"):
        windows = calibration_windows(tokenizer, args.nsamples, args.seqlen) if calibrated else None
        info = quantize_llmcompressor(model, tokenizer, args.method, bits, group, windows)
        library = "llmcompressor"
    elif args.method == "hqq":
        info = quantize_hqq(model, bits, group, args.device)
        library = "hqq"
        hqq_parts = hqq_linear_bytes(model, bits)
        hqq_to_dense(model)
    else:
        library = "-"
    quantize_s = time.perf_counter() - t0
    model.eval()
    log(f"quantized in {quantize_s:.0f} s")

    # Perplexity and zero-shot, with bitstack's evaluators.
    from bitstack.evaluation.perplexity import perplexity
    from bitstack.evaluation.zeroshot import evaluate_tasks

    t0 = time.perf_counter()
    text = (DATA / "wikitext2_test.txt").read_text(encoding="utf-8")
    ppl = perplexity(model, tokenizer, text, seqlen=2048, max_windows=args.max_windows, progress=False)
    ppl_s = time.perf_counter() - t0
    log(f"WikiText-2 ppl {ppl.ppl:.4f} over {ppl.windows} windows in {ppl_s:.0f} s")

    t0 = time.perf_counter()
    zs = evaluate_tasks(model, tokenizer, {t: DATA / "zeroshot" / f"{t}.jsonl" for t in TASKS},
                        batch_size=args.batch_size, limit=args.zs_limit or None, progress=False)
    zs_s = time.perf_counter() - t0
    log(f"zero-shot avg {zs['average']:.4f} in {zs_s:.0f} s")

    # Memory, as the library stores the quantized linears.
    if args.method == "float":
        from bitstack.runtime.budget import memory_bytes

        parts = {"weight_bytes": memory_bytes(model) - base_bytes, "scale_bytes": 0, "zero_bytes": 0}
    elif args.method == "hqq":
        parts = hqq_parts
    else:
        parts = llmcompressor_linear_bytes(model, bits, qparams)
    memory = base_bytes + parts["weight_bytes"] + parts["scale_bytes"] + parts["zero_bytes"]

    row.update({
        "label": LABELS[args.method] if group is None else f"{LABELS[args.method]} g{group}",
        "library": library,
        "memory_bytes": memory, "memory_mb": round(memory / 1e6, 3), "base_bytes": base_bytes,
        "quantized_params": qparams, "bits_per_param": round(8 * (memory - base_bytes) / qparams, 4),
        **parts,
        "ppl": ppl.ppl, "nll": ppl.nll, "ppl_windows": ppl.windows, "ppl_tokens": ppl.tokens,
        **{f"{t}_acc": zs["tasks"][t]["acc"] for t in TASKS},
        **{f"{t}_acc_norm": zs["tasks"][t].get("acc_norm") for t in TASKS},
        "lambada_openai_ppl": zs["tasks"]["lambada_openai"]["perplexity"],
        "zs_n": {t: zs["tasks"][t]["n"] for t in TASKS},
        "zs_avg": zs["average"], "zs_avg_acc_norm": zs["average_acc_norm"],
        "quantize_s": round(quantize_s, 1), "ppl_s": round(ppl_s, 1), "zs_s": round(zs_s, 1),
        "total_s": round(time.perf_counter() - t_start, 1),
        "dtype": "bfloat16", "threads": args.threads, "calib": "calibration_wikipedia.txt (seed 0)" if calibrated else None,
        "machine": (f"{torch.cuda.get_device_name()} GPU, {os.cpu_count()} CPU cores" if args.device.startswith("cuda") else
                    f"{platform.machine()} CPU, {os.cpu_count()} cores ({platform.processor() or 'x86_64'}), torch threads {args.threads}"),
        "device": args.device,
        "versions": versions(), "info": info,
        "command": "python " + " ".join(shlex.quote(a) for a in [str(Path(sys.argv[0]).resolve().relative_to(REPO))] + sys.argv[1:]),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    })
    rows = [r for r in existing_rows(jsonl) if row_key(r) != row_key(row)] + [row]
    with open(jsonl, "w", encoding="utf-8") as handle:
        for r in rows:
            handle.write(json.dumps(r) + "\n")
    write_csv(rows, csv_path)
    log(f"{row['label']} w{bits}: {row['memory_mb']} MB, {row['bits_per_param']} bits/param, ppl {row['ppl']:.3f}, "
        f"zs avg {row['zs_avg']:.4f}, {row['total_s']:.0f} s -> {jsonl}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
