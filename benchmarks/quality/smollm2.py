"""WikiText-2 perplexity of SmolLM2-135M: float, full stack, and budgets of N bits/param.

    python -m benchmarks.quality.smollm2 --calib ../shared/data/calibration_wikipedia.txt \
        --ppl ../shared/data/wikitext2_test.txt --artifact runs/smol.bstk

Compresses the embedded model (unless --artifact already exists) with bitstack's defaults, or
the paper's method with ``--codec avd --niter 16 --rank 16`` (then the paper's scale and the
proxy order, as in the README's table), then prints a markdown table and writes JSON next to the artifact.  Perplexity
follows the standard protocol (2048-token windows, all 148 by default).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from bitstack.artifact.reader import ArtifactReader
from bitstack.compressor import compress
from bitstack.config import CompressConfig
from bitstack.evaluation.perplexity import perplexity
from bitstack.models.source import load_float_model
from bitstack.runtime.loader import default_device, load, load_tokenizer
from bitstack.runtime.report import memory_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calib", required=True)
    parser.add_argument("--ppl", required=True)
    parser.add_argument("--artifact", default="runs/smollm2-135m.bstk")
    parser.add_argument("--nsamples", type=int, default=CompressConfig.nsamples)
    parser.add_argument("--seqlen", type=int, default=CompressConfig.seqlen)
    parser.add_argument("--codec", default=CompressConfig.codec, help="planes (default) or avd (the paper's)")
    parser.add_argument("--niter", type=int, default=CompressConfig.niter)
    parser.add_argument("--rank", type=int, default=CompressConfig.rank)
    parser.add_argument("--bits", default="4,3,2.5", help="budgets in bits per decomposed parameter")
    parser.add_argument("--max-windows", type=int, default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--result", default=None, help="also write a result file (benchmarks/resultfile.py)")
    args = parser.parse_args()

    device = torch.device(args.device) if args.device else default_device()
    path = Path(args.artifact)
    path.parent.mkdir(parents=True, exist_ok=True)
    seconds = None
    if not (path / "manifest.json").is_file():
        config = CompressConfig(calib=args.calib, nsamples=args.nsamples, seqlen=args.seqlen, niter=args.niter, rank=args.rank,
                                codec=args.codec, **({"scale_power": "1", "sort": "proxy"} if args.codec == "avd" else {}))
        started = time.time()
        compress("smollm2-135m", path, config, device=device, progress=False)
        seconds = time.time() - started
    with ArtifactReader(path, verify=False) as reader:
        manifest = reader.manifest
    tokenizer = load_tokenizer(path)
    text = Path(args.ppl).read_text(encoding="utf-8")

    def ppl(model) -> float:
        return perplexity(model, tokenizer, text, max_windows=args.max_windows, progress=False).ppl

    rows = []
    dense = load_float_model("smollm2-135m").model.to(device, torch.bfloat16).eval()
    with torch.no_grad():
        rows.append({"setting": "float (bf16)", "memory_bytes": sum(p.numel() * p.element_size() for p in dense.parameters()),
                     "bits_per_param": 16.0, "ppl": ppl(dense)})
    del dense
    params = manifest.decomposed_params()
    budgets = [("full stack", None)] + [(f"{b} bits", manifest.base_bytes + int(float(b) * params / 8)) for b in args.bits.split(",")]
    for label, budget in budgets:
        model = load(path, budget, device=device)
        report = memory_report(model)
        with torch.no_grad():
            rows.append({"setting": label, **report, "ppl": ppl(model)})
        del model
    float_ppl = rows[0]["ppl"]
    print(f"\nSmolLM2-135M-Instruct, WikiText-2 test, 2048-token windows ({args.max_windows or 'all'}), "
          f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu'}, "
          f"torch {torch.__version__}, compress {manifest.compression}" + (f", took {seconds:.0f} s" if seconds else ""))
    print("| setting | memory (MB) | bits/param (decomposed) | blocks | WikiText-2 ppl | vs float |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['setting']} | {row['memory_bytes'] / 1e6:.1f} | {row['bits_per_param']:.2f} | "
              f"{row.get('blocks_loaded', '-')} | {row['ppl']:.2f} | {row['ppl'] / float_ppl:.3f}× |")
    (path.parent / (path.name + ".quality.json")).write_text(json.dumps({"rows": rows, "compression_seconds": seconds,
                                                                        "compression": manifest.compression}, indent=1))
    if args.result:
        from benchmarks.resultfile import write_result

        table = [[r["setting"], f"{r['memory_bytes'] / 1e6:.1f}", f"{r['bits_per_param']:.2f}", r.get("blocks_loaded", "–"),
                  f"{r['ppl']:.2f}", f"{r['ppl'] / float_ppl:.3f}×"] for r in rows]
        write_result(args.result, title=f"SmolLM2-135M at budgets of N bits per parameter (codec {manifest.compression['codec']})",
                     topic="quality", columns=["setting", "memory (MB)", "bits/param (decomposed)", "blocks",
                                               "WikiText-2 ppl", "vs float"], rows=table,
                     notes=(f"WikiText-2 test, {args.max_windows or 'all'} windows of 2048 tokens. Compression settings: "
                            + ", ".join(f"{k} {v}" for k, v in manifest.compression.items() if k != "calib") + "."),
                     extra={"rows": rows, "compression_seconds": seconds, "compression": manifest.compression})


if __name__ == "__main__":
    main()
