"""A rank's part of an artifact, in one process: the shard spec, its manifest, its reader, its load."""

from __future__ import annotations

import pytest
import torch
from peak_meter import metered_load

import bitstack
from bitstack.artifact.opening import open_artifact
from bitstack.distributed.pipeline import plan_pipeline
from bitstack.distributed.shard import LayerShard, model_names, part_manifest, split_layers
from bitstack.errors import BitstackError, BudgetError, InputError
from bitstack.runtime.linear import BitStackLinear
from bitstack.runtime.loader import _build_skeleton


def _manifest(path):
    with open_artifact(path, verify=False) as reader:
        return reader.manifest


def _shards(manifest, bounds):
    decoder, embed, head, layers = model_names(_build_skeleton(manifest))
    ranges = [range(a, b) for a, b in zip(bounds, bounds[1:])]
    return [LayerShard(r, len(ranges), ranges[r], layers, decoder, embed, head) for r in range(len(ranges))]


def test_split_layers_follows_shares_and_leaves_every_rank_a_layer():
    assert split_layers([10] * 8, [1, 1]) == [range(0, 4), range(4, 8)]
    assert split_layers([10] * 8, [3, 1]) == [range(0, 6), range(6, 8)]
    assert split_layers([100, 1, 1, 1], [1, 1]) == [range(0, 1), range(1, 4)]
    assert split_layers([1, 1, 1, 100], [1, 1, 1]) == [range(0, 2), range(2, 3), range(3, 4)]
    with pytest.raises(InputError, match="3 ranks cannot split 2 decoder layers"):
        split_layers([1, 1], [1, 1, 1])
    with pytest.raises(InputError, match="must be positive"):
        split_layers([1, 1], [1, 0])


def test_bad_shard_specs_are_one_line_errors():
    for make, words in ((lambda: LayerShard(2, 2, range(0, 1), 3, "model.layers"), "rank 2 is outside a world of 2"),
                        (lambda: LayerShard(0, 2, range(1, 1), 3, "model.layers"), "non-empty range"),
                        (lambda: LayerShard(0, 2, range(0, 4), 3, "model.layers"), "within the model's 3 layers")):
        with pytest.raises(InputError, match=words) as info:
            make()
        assert "\n" not in str(info.value)


def test_plan_checks_budgets_and_layers(tiny_artifact):
    m = _manifest(tiny_artifact[0])
    layer_of = _shards(m, [0, 3])[0].layer_of
    assert plan_pipeline(m, 3, layer_of, ["1MB", None], [2, 1], 2).layers == (range(0, 2), range(2, 3))
    assert plan_pipeline(m, 3, layer_of, ["1MB", "1MB"], None, 2).budgets == (1_000_000, 1_000_000)
    for budgets, layers, words in ((["1MB"], None, "1 budget"), ("1MB", None, "one budget"),
                                   ([None, None], [1, 1], "summing to the model's 3 layers"),
                                   ([None, None], [3, 0], "positive counts"), (["lots", None], None, "lots")):
        with pytest.raises(BitstackError, match=words):
            plan_pipeline(m, 3, layer_of, budgets, layers, 2)


@pytest.mark.parametrize("fixture", ["tiny_artifact", "tiny_avd_artifact"])
def test_parts_cover_the_artifact_once(request, fixture):
    m = _manifest(request.getfixturevalue(fixture)[0])
    parts = [part_manifest(m, s) for s in _shards(m, [0, 1, 3])]
    positions = sorted(p for _, ps in parts for p in ps)
    assert positions == list(range(len(m.stack)))  # every block in exactly one part
    assert sum(len(p.weights) for p, _ in parts) == len(m.weights)
    names = [{t.name for t in p.base_tensors} for p, _ in parts]
    assert names[0] | names[1] == {t.name for t in m.base_tensors}
    for part, ps in parts:
        assert [part.stack[i] for i in range(len(ps))] == [m.stack[p] for p in ps]  # global order kept
        assert part.prefix_bytes[0] == part.base_bytes == sum(t.nbytes() for t in part.base_tensors)
        assert part.full_bytes == part.base_bytes + sum(e.bytes for e in part.stack)
        assert all(e.index == 0 for e in part.stack[: part.floor_blocks])
    embed = "model.embed_tokens.weight"
    assert embed in names[0] and embed not in names[1] and "lm_head.weight" in names[1] - names[0]


def test_part_reader_reads_the_global_blocks(tiny_artifact):
    path = tiny_artifact[0]
    with open_artifact(path) as whole:
        shard = _shards(whole.manifest, [0, 2, 3])[1]
        part = shard.select(open_artifact(path))
        got = part.read_blocks(0, len(part.positions))
        assert [e for e, _ in got] == [whole.manifest.stack[p] for p in part.positions]
        for (_, block), p in zip(got, part.positions):
            assert all(torch.equal(a, b) for a, b in zip(block.tensors, whole.read_block(p).tensors))
        assert set(part.read_base()) == {t.name for t in part.manifest.base_tensors}
        with pytest.raises(ValueError, match="outside the part's stack"):
            part.read_blocks(0, len(part.positions) + 1)
        part.close()


@pytest.mark.parametrize("kernels", [False, True])
def test_part_load_peaks_within_its_budget(tiny_artifact, kernels):
    """A rank's load reads only its own tensors: on the pure path its peak is its final bytes,
    in kernel mode (Triton's interpreter) within its budget, as a whole model's."""
    path = tiny_artifact[0]
    m = _manifest(path)
    shard = _shards(m, [0, 1, 3])[1]
    part, _ = part_manifest(m, shard)
    budget = part.prefix_bytes[part.floor_blocks + (len(part.stack) - part.floor_blocks) // 2]
    model, meter = metered_load(path, budget, device="cpu", shard=shard, kernels=kernels)
    resident = bitstack.memory_bytes(model)
    assert resident <= budget and meter.peak <= budget
    if not kernels:
        assert resident == budget == meter.peak
    held = {n for n, m_ in model.named_modules() if isinstance(m_, BitStackLinear)}
    assert held == {w.name for w in part.weights}
    assert model.model.embed_tokens.weight.device.type == "meta"  # the first rank's
    with pytest.raises(BudgetError, match="below this artifact's floor"):
        bitstack.load(path, part.floor_bytes - 1, device="cpu", shard=shard)


def test_tied_head_goes_to_the_last_rank_with_its_target(tiny_artifact):
    """A tied LM head (an alias of the input embedding) is the last rank's, and brings the
    embedding there; the embedding is named once, under its own module."""
    import dataclasses

    from tiny_models import tiny_config
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        tied = AutoModelForCausalLM.from_config(tiny_config("llama", tie_word_embeddings=True))
    _, embed, head, _ = model_names(tied)
    assert embed == {"model.embed_tokens.weight"} and head == {"lm_head.weight"}
    m = _manifest(tiny_artifact[0])
    base = {**m.base, "tensors": [t for t in m.base["tensors"] if t["name"] != "lm_head.weight"],
            "aliases": {"lm_head.weight": "model.embed_tokens.weight"}}
    m = dataclasses.replace(m, base=base)
    first, last = (part_manifest(m, s)[0] for s in _shards(m, [0, 1, 3]))
    assert first.base["aliases"] == {} and last.base["aliases"] == {"lm_head.weight": "model.embed_tokens.weight"}
    assert "model.embed_tokens.weight" in {t.name for t in first.base_tensors} & {t.name for t in last.base_tensors}
