"""Tiny random causal LMs and an offline tokenizer, built from configs (no downloads)."""

from __future__ import annotations

import torch

WORDS = ("the cat dog sat on a mat and ran to house big small red blue green one two three four five "
         "six seven eight nine ten is was are were it he she they we you i of in at by for with from").split()


def tiny_tokenizer():
    """A word-level tokenizer over :data:`WORDS` plus special tokens (vocab 64)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    vocab = {tok: i for i, tok in enumerate(specials + WORDS)}
    for i in range(len(vocab), 64):
        vocab[f"w{i}"] = i
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def tiny_config(family: str, **overrides):
    """A small config of ``family`` (llama, mistral, qwen2, qwen3, opt, gpt_neox, phi3)."""
    from transformers import AutoConfig

    common = dict(vocab_size=64, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    llama_like = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)
    table = {
        "llama": llama_like,
        "mistral": {**llama_like, "sliding_window": None},
        "qwen2": llama_like,
        "qwen3": {**llama_like, "head_dim": 12},
        "phi3": {**llama_like, "pad_token_id": 3},
        "opt": dict(hidden_size=48, ffn_dim=96, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256,
                    word_embed_proj_dim=48, do_layer_norm_before=True),
        "gpt_neox": dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=256, rotary_pct=0.5),
    }
    return AutoConfig.for_model(family, **{**common, **table[family], **overrides})


def tiny_model(family: str = "llama", seed: int = 0, **overrides):
    """A randomly initialised causal LM of ``family`` in float32, eval mode."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **overrides))
    with torch.no_grad():  # give norms non-trivial weights so that folding is really exercised
        for name, p in model.named_parameters():
            if p.dim() == 1 and "norm" in name:
                p.uniform_(0.5, 1.5)
    return model.eval()


def planes_layer(out_features: int, in_features: int, group_size: int, blocks: int, seed: int):
    """A BitStackLinear of codec planes holding ``blocks`` blocks of a random weight's
    decomposition (seeded), with a random bias (global RNG) and no input scale."""
    from bitstack.codecs.planes.decompose import plane_decompose
    from bitstack.runtime.linear import BitStackLinear

    dec = plane_decompose(torch.randn(out_features, in_features, generator=torch.Generator().manual_seed(seed)),
                          blocks, group_size)
    layer = BitStackLinear(in_features, out_features, codec="planes", params={"group_size": group_size}, bias=True,
                           input_scale=False)
    layer.plane_offset.copy_(dec.offset)
    layer.plane_step.copy_(dec.step)
    layer.bias.data.normal_()
    layer.blocks = list(dec.blocks)
    layer.blocks_changed()
    return layer
