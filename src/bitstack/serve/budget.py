"""The serving memory rule: one target covers weights, KV cache and working memory.

Pure functions of byte counts (docs/serve.md explains the rule):

* every admitted request reserves KV for its whole life: the decode batch is left-padded, so
  ``rows`` admitted requests hold at most ``rows × longest × kv_per_token`` bytes, ``longest``
  being the largest ``prompt + max_tokens`` among them (:func:`kv_reserve_bytes`), plus one
  layer's worth for the concatenation that appends a token or a row;
* working memory (activations of the largest forward pass the admitted requests can cause, and
  the scratch of a compressed linear's product) is estimated from the model's shape
  (:func:`working_bytes`);
* the weights get what remains, between their floor and the full stack
  (:func:`weight_allotment`);
* a request is admitted only if the floor, the KV of every admitted request and its own, and the
  working memory fit the target (:func:`admits`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    """What the working-memory estimate needs of a model (from its transformers config)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    vocab: int
    itemsize: int  # bytes per element of the compute dtype
    context: int  # maximum positions (prompt + generated tokens)
    weight_elements: int = 0  # out × in of the largest compressed linear (0: a float model)
    weight_inputs: int = 0  # the largest in_features of a compressed linear

    @classmethod
    def from_config(cls, config, itemsize: int, weight_elements: int = 0, weight_inputs: int = 0) -> "ModelShape":
        hidden = int(config.hidden_size)
        intermediate = getattr(config, "intermediate_size", None) or getattr(config, "ffn_dim", None) or 4 * hidden
        context = getattr(config, "max_position_embeddings", None) or 2048
        return cls(layers=int(config.num_hidden_layers), hidden=hidden, intermediate=int(intermediate),
                   heads=int(config.num_attention_heads), vocab=int(config.vocab_size), itemsize=itemsize,
                   context=int(context), weight_elements=weight_elements, weight_inputs=weight_inputs)


@dataclass(frozen=True)
class Request:
    """An admitted (or candidate) request as the rule sees it: prompt and generation budget."""

    prompt_tokens: int
    max_tokens: int

    @property
    def final_length(self) -> int:
        return self.prompt_tokens + self.max_tokens


def kv_reserve_bytes(requests: list[Request], kv_per_token: int, layers: int) -> int:
    """KV bytes that ``requests`` can hold until they finish, in the left-padded decode batch.

    Every row is as long as the longest live row, and no row outgrows its ``final_length``;
    one layer is added for the concatenation that appends a token or a row (it holds the old
    and the new tensor of one layer at a time).
    """
    if not requests:
        return 0
    total = len(requests) * max(r.final_length for r in requests) * kv_per_token
    return total + -(-total // max(layers, 1))


def forward_bytes(shape: ModelShape, tokens: int, context: int, logit_rows: int) -> int:
    """Activation bytes of one forward pass of ``tokens`` query tokens over ``context`` keys.

    Hidden states, q/k/v/o and the MLP (≈ 6 × hidden + 3 × intermediate values per token at the
    compute dtype), float32 attention scores (heads × context per token, as in unfused
    attention) and the logits of ``logit_rows`` rows (model dtype, then float32 probabilities).
    """
    per_token = (6 * shape.hidden + 3 * shape.intermediate) * shape.itemsize + 4 * shape.heads * context
    return tokens * per_token + logit_rows * shape.vocab * (shape.itemsize + 8)


LUT_TOKENS = 16  # forwards of up to this many tokens may use lookup tables instead of a rebuilt weight


def weight_transient_bytes(shape: ModelShape) -> int:
    """Scratch of one compressed linear's product (one linear at a time): the larger of a rebuilt
    dense weight (accumulated in float32, then cast: 16 + itemsize bytes per element of the
    largest linear) and the CPU lookup tables of up to :data:`LUT_TOKENS` tokens (float32
    tables of 256 entries per input byte, twice: 512 bytes per token and input feature).
    ``benchmarks/serving/working_memory.py`` checks it against measured peaks."""
    return max(shape.weight_elements * (16 + shape.itemsize), LUT_TOKENS * shape.weight_inputs * 512)


def working_bytes(shape: ModelShape, requests: list[Request], prefill_chunk: int) -> int:
    """Working memory the admitted ``requests`` can need: the larger of one decode step of all
    of them and one prefill chunk of the longest prompt (the engine runs one at a time), plus
    :func:`weight_transient_bytes`."""
    if not requests:
        return 0
    longest = max(r.final_length for r in requests)
    decode = forward_bytes(shape, len(requests), longest, len(requests))
    prompt = max(r.prompt_tokens for r in requests)
    prefill = forward_bytes(shape, min(prefill_chunk, prompt), prompt, 1)
    return max(decode, prefill) + weight_transient_bytes(shape)


def committed_bytes(requests: list[Request], shape: ModelShape, kv_per_token: int, prefill_chunk: int) -> int:
    """KV reserve plus working memory of ``requests``: what the weights must leave free."""
    return kv_reserve_bytes(requests, kv_per_token, shape.layers) + working_bytes(shape, requests, prefill_chunk)


def weight_allotment(target: int, committed: int, floor: int, full: int) -> int:
    """Bytes the weights may hold: what the target leaves after ``committed``, clamped to
    [floor, full] (the floor when even that is over the target: requests in flight finish)."""
    return max(floor, min(full, target - committed))


def admits(target: int, floor: int, committed_with_request: int) -> bool:
    """Whether a request fits: weights shrunk to the floor, plus every admitted request's KV and
    working memory with this request included, within the target."""
    return floor + committed_with_request <= target
