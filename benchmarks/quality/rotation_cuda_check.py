"""A rotated artifact on the GPU: its logits (Triton kernels when available) against the CPU's.

Compresses a tiny random Llama with ``rotate=hadamard`` (the run-time input rotation of down_proj
and the final norm's rotation both in play), loads it at three budgets on the CPU (pure PyTorch)
and on CUDA in bfloat16 (kernel mode when Triton is there), and prints the relative logit
difference per budget; exits 1 if any exceeds ``--tol``.

    python -m benchmarks.quality.rotation_cuda_check --tol 2e-2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tol", type=float, default=2e-2, help="largest relative logit difference (bf16 on both sides)")
    parser.add_argument("--device", default="cuda", help="the device compared with the CPU (cpu: a dry run of this script)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
    from tiny_models import tiny_model, tiny_tokenizer

    import bitstack
    from bitstack.artifact.reader import ArtifactReader
    from bitstack.config import CompressConfig
    from bitstack.runtime.linear import BitStackLinear

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    model = tiny_model("llama", hidden_size=96, intermediate_size=192, num_attention_heads=4, num_key_value_heads=2,
                       tie_word_embeddings=True)
    config = CompressConfig(nsamples=8, seqlen=64, niter=6, group_size=32, batch_size=4, rotate="hadamard")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        path = bitstack.compress(model, Path(tmp) / "r.bstk", config, tokenizer=tiny_tokenizer(), device="cpu",
                                 progress=False)
        with ArtifactReader(path) as reader:
            floor, full = reader.manifest.floor_bytes, reader.manifest.full_bytes
            prefix = reader.manifest.prefix_bytes
        for fraction in (0.0, 0.5, 1.0):
            budget = int(floor + fraction * (full - floor))
            gpu = bitstack.load(path, budget, device=args.device, dtype="bfloat16")
            # kernel mode keeps room for repacks: the CPU loads exactly the GPU's prefix
            cpu = bitstack.load(path, prefix[gpu.bitstack.loaded], device="cpu", dtype="bfloat16")
            assert cpu.bitstack.loaded == gpu.bitstack.loaded
            kernels = any(m.packed is not None for m in gpu.modules() if isinstance(m, BitStackLinear))
            ids = torch.randint(4, 64, (2, 48))
            with torch.no_grad():
                a, b = cpu(ids).logits.float(), gpu(ids.to(args.device)).logits.float().cpu()
            diff = float((a - b).norm() / a.norm())
            worst = max(worst, diff)
            print(f"budget {budget} B ({cpu.bitstack.loaded} blocks): relative logit difference {diff:.2e}, "
                  f"kernel mode {kernels}", flush=True)
    print("rotation CUDA check " + ("passed" if worst <= args.tol else "FAILED"))
    return 0 if worst <= args.tol else 1


if __name__ == "__main__":
    raise SystemExit(main())
