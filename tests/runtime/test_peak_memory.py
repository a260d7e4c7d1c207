"""Peak resident weight bytes during load and resize (issue 6, part 5: measured, not assumed).

``tests/peak_meter.py`` samples the live tensor bytes (the model's, plus everything allocated
meanwhile that is still alive) after every allocation, so a staging copy, a conversion buffer or
a repack transient shows up in the peak.  On the CPU's pure-PyTorch path the peak is exactly the
final resident bytes of a load, and exactly max(before, after) of a resize: no transient at all.
"""

from __future__ import annotations

import random

import pytest
import torch
from peak_meter import kernels_on_load, metered_load, metered_resize

import bitstack
from bitstack.artifact.reader import ArtifactReader
from bitstack.config import CompressConfig
from bitstack.runtime.budget import blocks_for_budget, prefix_bytes_at, repack_reserve
from bitstack.runtime.linear import BitStackLinear


def _manifest(path):
    with ArtifactReader(path) as reader:
        return reader.manifest


@pytest.fixture(params=["tiny_artifact", "tiny_avd_artifact"])
def artifact(request):
    """The session's tiny artifacts: the default codec (planes) and the paper's (avd)."""
    return request.getfixturevalue(request.param)[0]


# ---- the meter itself sees transients (so that the tests below can fail) ----------------------
def test_meter_sees_a_staging_copy_during_load(tiny_artifact, monkeypatch):
    path, _, _ = tiny_artifact
    m = _manifest(path)
    original = ArtifactReader.read_blocks

    def double_buffered(self, start, stop, device=None):  # a loader that stages every block twice
        blocks = original(self, start, stop, device)
        copies = [(b.signs.clone(), b.u.clone(), b.v.clone()) for _, b in blocks]
        del copies
        return blocks

    monkeypatch.setattr(ArtifactReader, "read_blocks", double_buffered)
    budget = m.prefix_bytes[m.floor_blocks + 5]
    model, meter = metered_load(path, budget, device="cpu")
    resident = bitstack.memory_bytes(model)
    assert resident == budget and meter.end == budget
    assert meter.peak == budget + (budget - m.base_bytes)  # every block once more, at the last copy


def test_meter_sees_a_transient_scratch_during_resize(tiny_artifact, monkeypatch):
    path, _, _ = tiny_artifact
    m = _manifest(path)
    model = bitstack.load(path, m.floor_bytes, device="cpu")
    original = BitStackLinear.blocks_changed

    def with_scratch(self):
        scratch = torch.empty(4096, dtype=torch.uint8)  # dropped at once
        del scratch
        original(self)

    monkeypatch.setattr(BitStackLinear, "blocks_changed", with_scratch)
    report, meter = metered_resize(model, None)  # grow to the full stack: blocks_changed runs after the attach
    assert report.new_bytes == m.full_bytes == meter.end
    assert meter.start == m.floor_bytes and meter.peak == m.full_bytes + 4096


# ---- load ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [None, "float16", "bfloat16"])
def test_load_peak_is_the_final_resident_bytes(artifact, dtype):
    path = artifact
    m = _manifest(path)
    prefix = prefix_bytes_at(m, getattr(torch, dtype or m.compression["dtype"]))
    floor = prefix[m.floor_blocks]
    budgets = [floor, floor + 1, prefix[m.floor_blocks + 1], (prefix[40] + prefix[41]) // 2, prefix[-1] - 1,
               prefix[-1], None]
    for budget in budgets:
        model, meter = metered_load(path, budget, device="cpu", dtype=dtype)
        resident = bitstack.memory_bytes(model)
        assert meter.start == 0 and meter.end == resident == model.bitstack.resident_bytes
        limit = prefix[-1] if budget is None else budget
        assert meter.peak <= limit, f"budget {budget}: peak {meter.peak} after {meter.peak_op}"
        assert meter.peak == resident, f"budget {budget}: transient of {meter.peak - resident} bytes after {meter.peak_op}"
        assert meter.censuses > model.bitstack.loaded  # at least one census per block read


# ---- resize -------------------------------------------------------------------------------
def _metered_resizes(model, budgets):
    """Resize ``model`` to each of ``budgets`` in turn, each under a :class:`PeakMeter`.

    Checks what every resize must (the meter starts at the resident bytes before, ends at those
    after, which are the report's and at most the budget) and yields
    ``(step, budget, before, report, meter)`` for the caller's own checks of the peak."""
    for step, budget in enumerate(budgets):
        before = bitstack.memory_bytes(model)
        report, meter = metered_resize(model, budget)
        after = bitstack.memory_bytes(model)
        assert meter.start == before, f"step {step}"
        assert meter.end == after == report.new_bytes <= budget, f"step {step}: {after} bytes after, budget {budget}"
        yield step, budget, before, report, meter


def test_random_grow_shrink_sequence_never_exceeds_the_budget(artifact):
    path = artifact
    m = _manifest(path)
    rng = random.Random(6)
    budgets = [m.prefix_bytes[rng.randint(m.floor_blocks, len(m.stack))] if step % 3 == 0  # met to the byte
               else rng.randint(m.floor_bytes, m.full_bytes + 1000) for step in range(60)]
    model = bitstack.load(path, m.floor_bytes, device="cpu")
    grows = shrinks = 0
    for step, budget, before, report, meter in _metered_resizes(model, budgets):
        previous = budgets[step - 1] if step else m.floor_bytes
        after = report.new_bytes
        # growing: never above the new budget; shrinking: never above what was resident before
        assert meter.peak <= max(previous, budget), f"step {step}: peak {meter.peak} after {meter.peak_op}"
        assert meter.peak == max(before, after), f"step {step}: transient of {meter.peak - max(before, after)} bytes"
        grows += after > before
        shrinks += after < before
    assert grows >= 15 and shrinks >= 15


# ---- load with another dtype than the stored one ------------------------------------------
@pytest.fixture(scope="module")
def wide_vocab_artifact(tmp_path_factory):
    """A 1-layer tiny Llama with a 2048-token vocabulary (embedding and LM head dominate), stored in bfloat16."""
    from tiny_models import tiny_model, tiny_tokenizer

    path = tmp_path_factory.mktemp("wide") / "wide.bstk"
    config = CompressConfig(nsamples=4, seqlen=32, niter=4, dtype="bfloat16", batch_size=2, shard_mb=0.05)
    bitstack.compress(tiny_model("llama", num_hidden_layers=1, vocab_size=2048), path, config,
                      tokenizer=tiny_tokenizer(), device="cpu", progress=False)
    return path


def test_base_dtype_conversion_within_the_budget(wide_vocab_artifact):
    """Loading with another dtype than the artifact's converts each base tensor through one chunk of
    stored bytes, no larger than the blocks still to be read (the loader bounds it): the peak is
    the final resident bytes, at the floor (where those blocks are 2.6 kB against a 192 kB raw
    embedding) as at any budget."""
    m = _manifest(wide_vocab_artifact)
    for dtype in (torch.float32, torch.float16, None):  # None: the stored bfloat16, no conversion
        prefix = prefix_bytes_at(m, dtype or torch.bfloat16)
        for budget in (prefix[m.floor_blocks], prefix[m.floor_blocks] + 1, prefix[m.floor_blocks + 1], None):
            model, meter = metered_load(wide_vocab_artifact, budget, device="cpu", dtype=dtype)
            assert meter.end == bitstack.memory_bytes(model) <= (prefix[-1] if budget is None else budget)
            over = meter.peak - meter.end
            assert over == 0, f"{dtype}, budget {budget}: {over} bytes over after {meter.peak_op}"


# ---- known transients, measured ----------------------------------------------------------
def _kernel_mode_available():
    try:
        from bitstack.kernels import triton_available
        from bitstack.kernels._checks import interpret_mode
    except ImportError:
        return False
    return triton_available() and interpret_mode()


def _repack_bound(weight, blocks: int, delta: int) -> int:
    """Bytes over the resident ones while ``BitStackLinear`` repacks one weight in kernel mode
    (``linear.py``'s module docstring), measured on the tiny model: ``blocks`` after the repack,
    ``delta`` of them new stored blocks (> 0) or fewer than before (< 0).

    The parts are packed in turn (signs, u, v: the bytes of one block's part p_t): part t adds its
    new tensor, ``blocks`` x p_t, to ``delta`` x the parts before it: on a grow, the new stored
    blocks' copies of them (a stored block's buffer is released with its last part); on a
    shrink (``delta`` < 0), what replacing them with fewer blocks has freed.  While new signs are
    converted to the bit-plane layout (codec avd), ``bitplane_from_standard`` adds 25 bytes of
    scratch per byte of one block's signs at these shapes, its output (1x) and its 8-byte shift
    table.  Codec planes (rank 0) packs its signs as they are: the new signs tensor alone."""
    rank = weight.params.get("rank", 0)  # codec planes: no u, v
    parts = [weight.out_features * ((weight.in_features + 7) // 8), weight.out_features * rank * 2,
             rank * weight.in_features * 2]
    stages = [blocks * part + delta * sum(parts[:t]) for t, part in enumerate(parts)]
    if delta > 0 and weight.codec == "avd":
        stages[0] += 26 * parts[0] + 8
    return max(stages)


def _pack_groups(m) -> dict[str, int]:
    """{weight: its sign group in kernel mode}: the default bit-plane group (avd), 0 (planes)."""
    return {w.name: 0 if w.codec == "planes" else 32 for w in m.weights}


def _blocks_per_weight(m, loaded: int) -> dict[str, int]:
    counts = dict.fromkeys((w.name for w in m.weights), 0)
    for entry in m.stack[:loaded]:
        counts[entry.tensor] += 1
    return counts


@pytest.mark.skipif(not _kernel_mode_available(), reason="kernel mode on the CPU needs Triton's interpreter")
def test_kernel_mode_repack_transient_is_one_weight_part(artifact):
    """Kernel mode (CUDA; here the same code on the CPU) repacks each changed weight into fresh
    packed tensors, one part at a time (signs, u, v), with the new blocks' signs converted
    through uint8 scratch: the peak is max(before, after) plus the largest :func:`_repack_bound`
    of the changed weights, and nothing else (``LiveStack.resize`` drops its reference to the
    last staged block before the repacks, so no stored block outlives its weight's repack).
    The bound is met to the byte at every grow (9 of the 16 steps here) and at some shrinks
    (codec planes 3 of 7, avd none: a shrink falls short when the weights repacked before the
    largest one have already freed bytes).  The same holds for codec planes, whose repack holds
    the new signs tensor alone."""
    from bitstack.runtime.linear import set_kernels

    path = artifact
    m = _manifest(path)
    dtype = torch.float16
    prefix = prefix_bytes_at(m, dtype)
    weights = {w.name: w for w in m.weights}
    model = bitstack.load(path, prefix[m.floor_blocks], device="cpu", dtype=dtype)
    set_kernels(model, True)
    rng = random.Random(1)
    exact = grows = changed = 0
    budgets = [prefix[rng.randint(m.floor_blocks, len(m.stack))] for _ in range(16)]
    for step, budget, before, report, meter in _metered_resizes(model, budgets):
        old, new = _blocks_per_weight(m, report.old_blocks), _blocks_per_weight(m, report.new_blocks)
        bound = max((_repack_bound(weights[n], new[n], new[n] - old[n]) for n in new if new[n] != old[n]), default=0)
        over = meter.peak - max(before, report.new_bytes)
        assert 0 <= over <= bound, f"step {step}: {over} bytes over (bound {bound}) after {meter.peak_op}"
        if report.grew:
            assert over == bound, f"step {step}: a grow measured {over} bytes over, the bound is {bound}"
        grows += report.grew
        exact += report.new_blocks != report.old_blocks and over == bound
        changed += report.new_blocks != report.old_blocks
    assert grows >= 8 and changed == 16 and exact >= 9  # measured: 9 (avd) and 12 (planes) of the 16 steps (the bound is no guess)


@pytest.mark.skipif(not _kernel_mode_available(), reason="kernel mode on the CPU needs Triton's interpreter")
def test_kernel_mode_load_transient_is_one_weight_part(artifact):
    """A load in kernel mode (as on CUDA) attaches the stored blocks, then packs weight by weight,
    each in parts (:func:`_repack_bound`, every block new): measured to the byte here."""
    path = artifact
    m = _manifest(path)
    dtype = torch.float16
    prefix = prefix_bytes_at(m, dtype)
    weights = {w.name: w for w in m.weights}
    exact = 0
    for budget in (prefix[m.floor_blocks], prefix[m.floor_blocks + 30], None):
        model, meter = metered_load(path, budget, device="cpu", dtype=dtype, kernels=True)
        modules = model.bitstack.modules
        assert all(module.packed is not None for module in modules.values())
        assert meter.end == bitstack.memory_bytes(model) == prefix[model.bitstack.loaded]
        bound = max(_repack_bound(weights[n], len(module.blocks), len(module.blocks)) for n, module in modules.items())
        over = meter.peak - meter.end
        assert 0 < over <= bound, f"budget {budget}: {over} bytes over (bound {bound}) after {meter.peak_op}"
        exact += over == bound
    assert exact == 3  # measured: every load


@pytest.mark.skipif(not _kernel_mode_available(), reason="kernel mode on the CPU needs Triton's interpreter")
def test_repack_in_parts_equals_an_all_at_once_pack(artifact):
    """After grows and shrinks in kernel mode, every weight's packed tensors are exactly those that
    ``bitstack.kernels.avd.layout.repack`` (codec avd) or ``pack_planes`` (codec planes) builds at once
    from freshly loaded stored blocks."""
    from bitstack.kernels import pack_planes
    from bitstack.kernels.avd.layout import repack
    from bitstack.runtime.linear import set_kernels

    path = artifact
    m = _manifest(path)
    prefix = prefix_bytes_at(m, torch.float16)
    model = bitstack.load(path, prefix[m.floor_blocks], device="cpu", dtype=torch.float16)
    set_kernels(model, True)
    for extra in (40, 3, 70, 55):  # grow, shrink, grow, shrink
        budget = prefix[m.floor_blocks + extra]
        bitstack.resize(model, budget)
        fresh = bitstack.load(path, prefix[model.bitstack.loaded], device="cpu", dtype=torch.float16)  # the same blocks
        for name, module in model.bitstack.modules.items():
            stored = fresh.bitstack.modules[name].blocks
            if module.codec.name == "planes":
                expected = pack_planes([b.signs for b in stored], module.plane_offset, module.plane_step,
                                       module.params["group_size"], in_features=module.in_features)
                parts = ("signs",)
                assert torch.equal(module.plane_offset, fresh.bitstack.modules[name].plane_offset)
            else:
                expected = repack(stored, group=module.packed.group)
                parts = ("signs", "u", "v")
            for part in parts:
                assert torch.equal(getattr(module.packed, part), getattr(expected, part)), f"{name} {part}"
            assert [b.signs.data_ptr() for b in module.blocks] == [module.packed.signs[i].data_ptr() for i in range(len(module.blocks))]


@pytest.mark.skipif(not _kernel_mode_available(), reason="kernel mode on the CPU needs Triton's interpreter")
def test_kernel_mode_peak_within_the_budget(artifact):
    """Kernel mode keeps room for its repacks (``budget.repack_reserve``): a load peaks within its
    budget, a grow within the new budget and a shrink within the previous one (which kept room
    for it), as on the pure-PyTorch path; the prefix is the longest whose bytes plus that room
    fit.  The one exception: a budget below the floor plus the floor's room still loads the floor
    (the floor stays the one error), over the budget by at most that room."""
    path = artifact
    m = _manifest(path)
    dtype = torch.float16
    prefix = prefix_bytes_at(m, dtype)
    floor = m.floor_blocks
    packed = _pack_groups(m)
    room = repack_reserve(m, floor, packed)
    assert room > 0

    def check_choice(budget, blocks):
        """The longest prefix whose bytes plus a load's room fit (the floor below that)."""
        fits = prefix[blocks] + repack_reserve(m, blocks, packed) <= budget
        assert fits or blocks == floor
        assert blocks == len(m.stack) or prefix[blocks + 1] + repack_reserve(m, blocks + 1, packed) > budget
        assert blocks <= blocks_for_budget(m, budget, dtype)  # the pure-PyTorch choice: never fewer bytes
        assert blocks == blocks_for_budget(m, budget, dtype, packed=packed)  # a fresh load's choice

    # the floor exception, measured
    model, meter = metered_load(path, prefix[floor], device="cpu", dtype=dtype, kernels=True)
    assert model.bitstack.loaded == floor and 0 < meter.peak - prefix[floor] <= room
    # loads
    rng = random.Random(2)
    budgets = [prefix[floor] + room, prefix[floor + 20] + room - 1, prefix[-1]] + [
        rng.randint(prefix[floor] + room, prefix[-1] + 1000) for _ in range(4)]
    for previous in budgets:
        model, meter = metered_load(path, previous, device="cpu", dtype=dtype, kernels=True)
        budget = previous
        assert all(module.packed is not None for module in model.bitstack.modules.values())
        check_choice(budget, model.bitstack.loaded)
        assert prefix[model.bitstack.loaded] + repack_reserve(m, model.bitstack.loaded, packed) <= budget
        assert meter.end == bitstack.memory_bytes(model) == prefix[model.bitstack.loaded]
        assert meter.peak <= budget, f"load at {budget}: {meter.peak - budget} bytes over after {meter.peak_op}"
    # resizes of the last one, in a random sequence (budgets from the floor up)
    budgets = [prefix[rng.randint(floor, len(m.stack))] if step % 2 else rng.randint(prefix[floor], prefix[-1] + 1000)
               for step in range(24)]
    grows = shrinks = 0  # ``previous``: the last load's budget
    for step, budget, before, report, meter in _metered_resizes(model, budgets):
        check_choice(budget, report.new_blocks)  # so a resize holds what a fresh load at this budget would
        assert all(module.packed is not None for module in model.bitstack.modules.values())
        limit = max(previous, budget)
        assert meter.peak <= limit, f"step {step}: {meter.peak - limit} bytes over after {meter.peak_op}"
        grows += report.new_blocks > report.old_blocks
        shrinks += report.new_blocks < report.old_blocks
        previous = budget
    assert grows >= 6 and shrinks >= 6


@pytest.mark.skipif(not _kernel_mode_available(), reason="kernel mode on the CPU needs Triton's interpreter")
def test_kernel_mode_resize_back_holds_what_the_load_held(artifact):
    """In kernel mode a budget means one prefix, loaded or resized to: load at B, grow, shrink
    back to B, and the model holds the first load's blocks, bit for bit (the room for the repacks
    is a load's in both cases, ``budget.blocks_for_budget``)."""
    path = artifact
    m = _manifest(path)
    dtype = torch.float16
    prefix = prefix_bytes_at(m, dtype)
    budget = prefix[m.floor_blocks + 37] + 1234  # between two prefixes
    with kernels_on_load():
        model = bitstack.load(path, budget, device="cpu", dtype=dtype)
    first = model.bitstack.loaded
    signs = {name: module.packed.signs.clone() for name, module in model.bitstack.modules.items()}
    assert first == blocks_for_budget(m, budget, dtype, packed=_pack_groups(m)) < blocks_for_budget(m, budget, dtype)
    bitstack.resize(model, prefix[-1] + 10**6)
    assert model.bitstack.loaded == len(m.stack)
    report = bitstack.resize(model, budget)
    assert report.new_blocks == first
    for name, module in model.bitstack.modules.items():
        assert torch.equal(module.packed.signs, signs[name]), name
