"""Build an artifact from a random Llama with large-model widths (for speed benchmarks, no download).

    python -m benchmarks.common.synthetic_artifact -o runs/wide.bstk --hidden 4096 --intermediate 14336 --layers 2

The weights are random (quality is meaningless); block sizes are those of the chosen widths, e.g.
Llama-3-8B's 4096/14336 — which is what resize and kernel timings depend on.  ``--codec planes``
(the default) rounds to nearest over each group's full range with no activation scale, so no
calibration statistic matters; ``--codec avd`` is the paper's rank-``--rank`` decomposition.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

import bitstack  # noqa: E402
from bitstack.config import CompressConfig  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--intermediate", type=int, default=14336)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--niter", type=int, default=16)
    parser.add_argument("--codec", choices=("planes", "avd"), default="planes")
    parser.add_argument("--group-size", type=int, default=128, help="codec planes")
    parser.add_argument("--rank", type=int, default=16, help="codec avd")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    from tiny_models import tiny_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers,
                         num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, vocab_size=args.vocab,
                         max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    started = time.time()
    codec = (dict(codec="planes", group_size=args.group_size, signs="nearest", clip="none", scale_power="0")
             if args.codec == "planes" else dict(codec="avd", rank=args.rank))
    cfg = CompressConfig(calib="self", nsamples=2, seqlen=32, niter=args.niter, batch_size=2, **codec)
    bitstack.compress(model, args.output, cfg, tokenizer=tiny_tokenizer(), device=args.device, overwrite=True, progress=False)
    print(f"wrote {args.output} in {time.time() - started:.1f} s")


if __name__ == "__main__":
    main()
