"""GGUF export (llama.cpp's format) of an artifact at a budget, for the llama architecture.

Each decomposed linear is written as a GGUF tensor of one block type:

* **exact grid (Q4_1, Q5_1)**: a planes weight with J ≤ 5 loaded blocks, groups whose size is a
  multiple of 32 and no run-time input scale is, per row and group, the uniform 2^J-level grid
  ``Ŵ = m + d·q`` with ``d = step·2^(2-J)``, ``m = offset - step·(2 - 2^(1-J))`` and
  ``q = Σ_i k_i 2^(J-1-i)`` (``k_i`` the sign bits of the blocks, :mod:`bitstack.codecs.planes.grid`):
  the layout of Q4_1 (J ≤ 4) and Q5_1 (J = 5) blocks of 32, whose ``d`` and ``m`` are float16.
  ``d`` is exact (a float16 step times a power of two); ``m`` is rounded to float16 once, so the
  error is that rounding alone.
* **otherwise** (more blocks, groups not a multiple of 32, a run-time input scale, which scales
  each input column, or the avd codec): the nearest faithful type, the dense
  ``Ŵ·diag(input_scale)`` in float16.

The report lists every tensor with its type and relative error ``‖W_gguf - W‖ / ‖W‖`` against the
float32 weight of ``bitstack.load`` at that budget (read back with gguf's own dequantizer).
Embeddings, norms and the LM head are float32 (norms) and float16.  Q and K rows are permuted as
llama.cpp's ``convert_hf_to_gguf.py`` does; transformers' GGUF loader undoes it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bitstack.errors import InputError

ARCHITECTURES = {"llama": "llama", "mistral": "llama"}  # transformers model_type -> GGUF architecture
BLOCK = 32  # inputs per Q4_1 / Q5_1 block
_NAMES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
          "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down",
          "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def gguf_name(name: str) -> str:
    """llama.cpp's tensor name of a transformers llama parameter name."""
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if name in fixed:
        return fixed[name]
    parts = name.split(".")  # model.layers.N.(self_attn|mlp).X.weight or model.layers.N.X.weight
    if parts[:2] != ["model", "layers"] or parts[-2] not in _NAMES:
        raise InputError(f"GGUF export: tensor {name!r} has no llama.cpp name")
    return f"blk.{parts[2]}.{_NAMES[parts[-2]]}.{parts[-1]}"


def permute_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's row order of a Q or K projection (``heads`` its heads): within each head the
    rotary pairs (i, i + d/2) become adjacent.  Works on any (out, ...) tensor."""
    out = weight.shape[0]
    return weight.reshape(heads, 2, out // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def grid_of(module) -> tuple[torch.Tensor, torch.Tensor, int] | None:
    """(d, m, J) of a weight whose loaded prefix is exactly a Q4_1/Q5_1 grid (its codec's
    ``uniform_grid`` on blocks of 32 inputs, at most 5 bits, no run-time input scale, d exact in
    float16), else None.  d, m: float16 (out, in / 32)."""
    grid = module.codec.uniform_grid(module, BLOCK) if module.input_scale is None else None
    if grid is None or grid[2] > 5:
        return None
    d, m, bits = grid
    d16 = d.to(torch.float16)
    if not torch.isfinite(d16).all() or not torch.equal(d16.float(), d):
        return None  # d out of float16's range: not exact
    return d16, m.to(torch.float16), bits


def pack_affine(weight: torch.Tensor, d: torch.Tensor, m: torch.Tensor, bits: int) -> np.ndarray:
    """Q4_1 (bits ≤ 4) or Q5_1 (bits 5) bytes (out, in / 32 · block bytes) of ``weight`` (float32
    (out, in)) on the grids m + d·q (float16 (out, in / 32)): q = round((W - m) / d) in [0, 2^bits)."""
    out, inp = weight.shape
    dd, mm = d.float().repeat_interleave(BLOCK, 1), m.float().repeat_interleave(BLOCK, 1)
    q = torch.where(dd > 0, torch.round((weight - mm) / torch.where(dd > 0, dd, 1)), 0).clamp(0, 2**bits - 1)
    q = q.to(torch.uint8).reshape(-1, BLOCK).numpy()
    head = [d.reshape(-1, 1).numpy().view(np.uint8), m.reshape(-1, 1).numpy().view(np.uint8)]
    low = (q[:, :16] & 0x0F) | ((q[:, 16:] & 0x0F) << 4)
    if bits <= 4:
        parts = head + [low]
    else:
        high = np.packbits((q >> 4) & 1, axis=-1, bitorder="little").reshape(-1, 4)
        parts = head + [high, low]
    return np.concatenate(parts, axis=-1).reshape(out, -1)


def write_gguf(model, tokenizer, output: str | Path, *, float_type: str = "float16") -> list[dict]:
    """Write ``model`` (loaded by ``bitstack.load`` in float32, on the CPU) to the GGUF file
    ``output``; returns the per-tensor report (``name``, ``type``, ``rel_error``)."""
    import gguf

    from bitstack.integrations.dense import dense_linear
    from bitstack.runtime.linear import BitStackLinear

    config = model.config
    arch = ARCHITECTURES.get(config.model_type)
    if arch is None:
        raise InputError(f"GGUF export writes llama-architecture models (llama, mistral), not {config.model_type!r}: "
                         "export --format hf and convert that folder with llama.cpp's convert_hf_to_gguf.py")
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer = gguf.GGUFWriter(str(output), arch)
    writer.add_name(config.model_type)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_rope_dimension_count(head_dim)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(float(_rope_theta(config)))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if float_type == "float16" else gguf.LlamaFileType.ALL_F32)
    if tokenizer is not None:
        _add_tokenizer(writer, tokenizer, gguf)
    float_np = np.float16 if float_type == "float16" else np.float32
    report = []
    modules = {name: m for name, m in model.named_modules() if isinstance(m, BitStackLinear)}
    tensors = [(n, p) for n, p in model.named_parameters() if n.rpartition(".")[0] not in modules]
    tensors += [(f"{n}.weight", m) for n, m in modules.items()]
    order = {n: i for i, (n, _) in enumerate(model.state_dict().items())}
    for name, value in sorted(tensors, key=lambda t: order.get(t[0], len(order))):
        if name == "lm_head.weight" and getattr(config, "tie_word_embeddings", False):
            continue
        heads_of = heads if ".q_proj." in name else kv_heads if ".k_proj." in name else None
        grid = grid_of(value) if isinstance(value, BitStackLinear) else None
        weight = (dense_linear(value).weight if isinstance(value, BitStackLinear) else value).detach().float()
        if heads_of:
            weight = permute_rows(weight, heads_of)
        if grid is not None:
            d, m, bits = grid
            if heads_of:
                d, m = permute_rows(d, heads_of), permute_rows(m, heads_of)
            qtype = gguf.GGMLQuantizationType.Q4_1 if bits <= 4 else gguf.GGMLQuantizationType.Q5_1
            data = pack_affine(weight, d, m, bits)
            writer.add_tensor(gguf_name(name), data, raw_dtype=qtype)  # data: (out, bytes per row)
            restored = torch.from_numpy(gguf.quants.dequantize(data, qtype)).reshape(weight.shape)
        else:
            qtype = gguf.GGMLQuantizationType.F32 if weight.dim() == 1 or float_np is np.float32 else gguf.GGMLQuantizationType.F16
            data = weight.numpy().astype(np.float32 if qtype == gguf.GGMLQuantizationType.F32 else np.float16)
            writer.add_tensor(gguf_name(name), data)
            restored = torch.from_numpy(data.astype(np.float32))
        error = float((restored - weight).norm() / weight.norm().clamp_min(1e-30))
        report.append({"name": name, "type": qtype.name, "rel_error": error})
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return report


def _rope_theta(config) -> float:
    theta = getattr(config, "rope_theta", None)
    if theta is None:  # transformers 5 keeps it in rope_parameters
        theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return theta


def _add_tokenizer(writer, tokenizer, gguf) -> None:
    """A byte-level BPE tokenizer's vocabulary and merges ("gpt2" in llama.cpp's terms); other
    tokenizers are not written (transformers still loads the model from the file)."""
    import json

    state = json.loads(tokenizer.backend_tokenizer.to_str()) if hasattr(tokenizer, "backend_tokenizer") else {}
    model = state.get("model", {})
    if model.get("type") != "BPE":
        return
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    special = set(tokenizer.all_special_ids)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([token for token, _ in vocab])
    writer.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for _, i in vocab])
    merges = model.get("merges", [])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    for setter, token_id in ((writer.add_bos_token_id, tokenizer.bos_token_id), (writer.add_eos_token_id, tokenizer.eos_token_id)):
        if token_id is not None:
            setter(token_id)
