"""Write a ``planes`` artifact of random blocks for a Llama of any width and depth, with no float model.

    python -m benchmarks.common.random_blocks_artifact -o runs/wide70b.bstk --hidden 8192 \\
        --intermediate 28672 --heads 64 --kv-heads 8 --vocab 128256 --layers 56 --niter 16

For load, resize and generation timings of models too large to compress here (e.g. 70B-shaped
layers): every decomposed weight gets ``--niter`` blocks of random signs (one random sign plane
per weight shape, reused: timings do not depend on the values), small grids, and the stack order
of :func:`bitstack.sorting.strategies.universal_order`'s layout (every weight's first block, then
block 1 of every weight, …).  Base tensors: random embeddings and head, unit norms, the model's
rotary buffers.  The quality of such a model is meaningless; its sizes are a real model's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def build(output: Path, config, *, niter: int, group_size: int, shard_mb: float, tokenizer=None) -> Path:
    """Write the artifact at ``output`` (replaced if it exists); returns its path."""
    from transformers import AutoModelForCausalLM

    from bitstack import __version__
    from bitstack.artifact.manifest import Manifest, WeightEntry
    from bitstack.artifact.writer import BaseTensorSpec, finish, partial_dir, write_base, write_shards, write_tokenizer
    from bitstack.codecs import get_codec
    from bitstack.codecs.base import Block, WeightShape
    from bitstack.models.architecture import find_decoder_layers, layer_linears

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    rotary = {f"model.rotary_emb.{n}": b for n, b in type(skeleton.model.rotary_emb)(config=config).named_buffers()}
    decoder = find_decoder_layers(skeleton)
    codec, params = get_codec("planes"), {"group_size": group_size}
    weights, specs, decomposed = [], [], set()
    for index, layer in enumerate(decoder.layers):
        for name, linear in layer_linears(layer).items():
            full = f"{decoder.path}.{index}.{name}"
            shape = WeightShape(linear.out_features, linear.in_features, params)
            weights.append(WeightEntry(full, linear.out_features, linear.in_features, "planes", params, niter,
                                       codec.block_nbytes(shape), False, False))
            decomposed.add(f"{full}.weight")
    generator = torch.Generator().manual_seed(0)
    for name, tensor in skeleton.named_parameters():
        if name in decomposed:
            continue
        value = (torch.ones(tensor.shape) if tensor.dim() == 1 else torch.randn(tensor.shape, generator=generator) * 0.02)
        specs.append(BaseTensorSpec(name, value.to(torch.bfloat16), "param"))
    for name, tensor in skeleton.named_buffers():
        specs.append(BaseTensorSpec(name, rotary[name].clone(), "buffer"))  # a Llama's only buffers: rotary
    for w in weights:
        for part, (dtype, shape) in codec.base_buffers(w).items():
            fill = 0.0 if part == "plane_offset" else 2.0 ** -10
            specs.append(BaseTensorSpec(f"{w.name}.{part}", torch.full(shape, fill, dtype=dtype), "buffer"))
    work = partial_dir(output)
    work.mkdir(parents=True, exist_ok=False)
    base_section, base_bytes = write_base(work, specs, {})
    signs: dict[tuple[int, int], Block] = {}

    def get_block(w: int, i: int) -> Block:
        weight = weights[w]
        key = (weight.out_features, weight.in_features)
        if key not in signs:
            parts = codec.block_parts(weight)
            signs[key] = Block(**{n: (torch.randint(0, 256, s, dtype=torch.uint8, generator=generator)
                                      if d == torch.uint8 else torch.empty(s, dtype=d)) for n, d, s in parts})
        return signs[key]

    order = [(w, i) for i in range(niter) for w in range(len(weights))]
    shards, stack = write_shards(work, weights, order, get_block, shard_bytes=int(shard_mb * 1e6), progress=True)
    prefix = [base_bytes]
    for block in stack:
        prefix.append(prefix[-1] + block.bytes)
    manifest = Manifest(library_version=__version__, model={"source": "random", "config": config.to_dict(),
                                                            "generation_config": None},
                        tokenizer=write_tokenizer(work, tokenizer), compression={"dtype": "bfloat16", "codec": "planes"},
                        base=base_section, weights=tuple(weights), shards=tuple(shards), stack=tuple(stack),
                        floor_blocks=len(weights), base_bytes=base_bytes, prefix_bytes=tuple(prefix))
    return finish(output, work, manifest, overwrite=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--hidden", type=int, default=8192)
    parser.add_argument("--intermediate", type=int, default=28672)
    parser.add_argument("--layers", type=int, default=56)
    parser.add_argument("--heads", type=int, default=64)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--niter", type=int, default=16)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--shard-mb", type=float, default=2000)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_models import tiny_tokenizer
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers,
                         num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, vocab_size=args.vocab,
                         max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=3,
                         tie_word_embeddings=False)
    started = time.time()
    path = build(Path(args.output), config, niter=args.niter, group_size=args.group_size, shard_mb=args.shard_mb,
                 tokenizer=tiny_tokenizer())
    print(f"wrote {path} in {time.time() - started:.1f} s")


if __name__ == "__main__":
    main()
