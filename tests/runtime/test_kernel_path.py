"""Loaded models on the Triton kernel path (``BitStackLinear`` in kernel mode), on the CPU.

Kernel mode stores each weight's blocks packed and runs the kernels: codec avd as one
``PackedBitStack`` (bit-plane signs) through ``bitstack.kernels.bitstack_linear``, codec planes
as one ``PackedPlanes`` (the stored signs stacked, the grid buffers referenced) through
``bitstack.kernels.planes_linear``.  On CUDA that is automatic; here the layers are switched to
it with ``set_kernels(model, True)`` and the kernels run in Triton's CPU interpreter
(``TRITON_INTERPRET=1``, set up by ``tests/triton_interpreter.py`` from the root conftest).  The
interpreter runs the plain-Triton sign unpacking; the PTX variants that CUDA uses are checked on
the GPU by ``benchmarks/e2e_decode.py`` (same model-level comparison) and the kernel benchmarks.
Every test runs on both codecs' tiny artifacts (the planes one has groups of 16 columns).
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch


pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

import bitstack  # noqa: E402
from bitstack.artifact.reader import ArtifactReader  # noqa: E402
from bitstack.codecs.avd.runtime import PackedBlockView  # noqa: E402
from bitstack.codecs.base import Block  # noqa: E402
from bitstack.kernels._checks import interpret_mode  # noqa: E402
from bitstack.runtime.budget import prefix_bytes_at, repack_reserve  # noqa: E402
from bitstack.runtime.linear import BitStackLinear, set_kernels  # noqa: E402

if not interpret_mode():
    pytest.skip("the kernel path runs on the CPU in Triton's interpreter (TRITON_INTERPRET=1)", allow_module_level=True)

# relative error of the logits (3 decoder layers), kernel path vs pure-PyTorch path, same dtype
# (measured: fp16 0.8e-3 to 1.1e-3, bf16 1.1e-2 to 1.4e-2)
REL_TOL = {torch.float16: 1e-2, torch.bfloat16: 5e-2}


def _manifest(path):
    with ArtifactReader(path) as reader:
        return reader.manifest


def _prefix(path, dtype=torch.float16):
    """(manifest, resident bytes of every prefix when loaded in ``dtype``)."""
    m = _manifest(path)
    return m, prefix_bytes_at(m, dtype)


@pytest.fixture(params=["tiny_avd_artifact", "tiny_artifact"], ids=["avd", "planes"])
def artifact(request):
    """The path of the session's tiny artifact of each codec."""
    return request.getfixturevalue(request.param)[0]


def _layers(model):
    return [m for m in model.modules() if isinstance(m, BitStackLinear)]


def _check_packed(model):
    """Every layer packed, its blocks the views of its packed tensors, bytes exact."""
    from bitstack.kernels import PackedBitStack, PackedPlanes

    state = model.bitstack
    for module in _layers(model):
        p = module.packed
        assert p is not None and p.num_blocks == len(module.blocks)
        for i, view in enumerate(module.blocks):
            assert view.signs.untyped_storage().data_ptr() == p.signs.untyped_storage().data_ptr()
            assert view.signs.data_ptr() == p.signs[i].data_ptr()
            if module.codec.name == "planes":  # planes: stored-layout signs, empty u and v, the grids referenced
                assert isinstance(p, PackedPlanes) and type(view) is Block
                assert view.u.numel() == view.v.numel() == 0
                assert p.offset is module.plane_offset and p.step is module.plane_step
            else:
                assert isinstance(p, PackedBitStack) and isinstance(view, PackedBlockView)
                assert view.u.data_ptr() == p.u[i].data_ptr() and view.v.data_ptr() == p.v[i].data_ptr()
    assert bitstack.memory_bytes(model) == state.resident_bytes == state.prefix_bytes[state.loaded]
    assert sum(len(m.blocks) for m in _layers(model)) == state.loaded


def _rel_err(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_cpu_default_stays_pure_pytorch(artifact):
    path = artifact
    model = bitstack.load(path, device="cpu", dtype="float16")
    assert all(m.packed is None and not any(isinstance(b, PackedBlockView) for b in m.blocks) for m in _layers(model))


def test_repack_is_exact_and_keeps_memory_bytes(artifact):
    path = artifact
    m, prefix = _prefix(path)
    budget = prefix[m.floor_blocks + 7]
    model = bitstack.load(path, budget, device="cpu", dtype="float16")
    fresh = bitstack.load(path, budget, device="cpu", dtype="float16")
    before = bitstack.memory_bytes(model)
    assert set_kernels(model, True) == len(_layers(model))
    _check_packed(model)
    assert bitstack.memory_bytes(model) == before
    for name, module in model.bitstack.modules.items():
        base = module.codec_base()
        for i, (view, stored) in enumerate(zip(module.blocks, fresh.bitstack.modules[name].blocks, strict=True)):
            back = view if module.codec.name == "planes" else view.stored()  # planes views keep the stored layout
            assert torch.equal(back.signs, stored.signs) and torch.equal(view.u, stored.u) and torch.equal(view.v, stored.v)
            assert torch.equal(module.codec.contribution(module, view, i, base), module.codec.contribution(module, stored, i, base))
        assert torch.equal(module.dense_weight(), fresh.bitstack.modules[name].dense_weight())
    assert set_kernels(model, False) == 0  # back to the stored layout, fresh tensors
    for name, module in model.bitstack.modules.items():
        assert module.packed is None
        for block, stored in zip(module.blocks, fresh.bitstack.modules[name].blocks, strict=True):
            assert type(block) is Block
            assert torch.equal(block.signs, stored.signs) and torch.equal(block.u, stored.u) and torch.equal(block.v, stored.v)
    assert bitstack.memory_bytes(model) == before


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernel_logits_match_pure_path(artifact, dtype):
    path = artifact
    m, prefix = _prefix(path, dtype)
    budget = prefix[m.floor_blocks + 9]
    pure = bitstack.load(path, budget, device="cpu", dtype=dtype)
    fast = bitstack.load(path, budget, device="cpu", dtype=dtype)
    set_kernels(fast, True)
    _check_packed(fast)
    g = torch.Generator().manual_seed(1)
    planes = any(module.codec.name == "planes" for module in _layers(fast))
    # avd: decode kernel (<= 4 tokens at this rank) and chunked prefill; planes: the one-token
    # kernel for 1 token, the few-token kernel for 12 (and for 3: test_resize_rebuilds_...), the
    # chunked prefill for 20
    for tokens in (1, 12, 20) if planes else (1, 6):
        ids = torch.randint(4, 64, (1, tokens), generator=g)
        err = _rel_err(_logits(fast, ids), _logits(pure, ids))
        assert err < REL_TOL[dtype], f"{tokens} tokens: relative error {err:.2e}"


def test_resize_rebuilds_the_packed_form(artifact):
    path = artifact
    dtype = torch.float16
    m, prefix = _prefix(path, dtype)
    model = bitstack.load(path, prefix[m.floor_blocks + 2], device="cpu", dtype=dtype)
    set_kernels(model, True)
    ids = torch.tensor([[5, 9, 17]])
    grown_tensor = m.stack[m.floor_blocks + 2].tensor
    old_signs = weakref.ref(model.bitstack.modules[grown_tensor].packed.signs)
    packed = {name: module.pack_group for name, module in model.bitstack.modules.items()}  # every weight
    for extra in (12, 1, 6):  # grow, shrink, grow
        # kernel mode keeps a load's room for its repacks: this budget holds exactly floor + extra blocks
        blocks = m.floor_blocks + extra
        budget = prefix[blocks] + repack_reserve(m, blocks, packed)
        report = bitstack.resize(model, budget)
        assert report.new_blocks == m.floor_blocks + extra
        _check_packed(model)
        if extra == 12:
            gc.collect()
            assert old_signs() is None  # the replaced packed tensors are released
            shrunk_tensor = m.stack[m.floor_blocks + 11].tensor
            old_signs = weakref.ref(model.bitstack.modules[shrunk_tensor].packed.signs)
        elif extra == 1:
            gc.collect()
            assert old_signs() is None
        if extra == 6 or not any(module.codec.name == "planes" for module in _layers(model)):  # (the interpreter is slow:
            # planes logits after the last resize only; its packed signs are compared exactly after every
            # resize by test_peak_memory.py::test_repack_in_parts_equals_an_all_at_once_pack)
            reference = bitstack.load(path, prefix[blocks], device="cpu", dtype=dtype)  # the same blocks
            err = _rel_err(_logits(model, ids), _logits(reference, ids))
            assert err < REL_TOL[dtype], f"after resize to floor + {extra}: relative error {err:.2e}"


def test_forward_repacks_a_list_edited_behind_its_back(artifact):
    path = artifact
    model = bitstack.load(path, device="cpu", dtype="float16")
    set_kernels(model, True)
    module = next(m for m in _layers(model) if len(m.blocks) > 1)
    x = torch.randn(1, module.in_features).half()
    module.blocks.pop()
    expected = torch.nn.functional.linear(x.float() * (module.input_scale.float() if module.input_scale is not None else 1),
                                          module.dense_weight(), None if module.bias is None else module.bias.float())
    y = module(x)
    assert module.packed.num_blocks == len(module.blocks)
    assert _rel_err(y, expected) < REL_TOL[torch.float16]


def test_planes_kernel_mode_survives_a_device_round_trip_and_new_grids(tiny_artifact):
    """Moving a packed planes model (to the same device) keeps it packed and exact; leaving kernel
    mode gives every block fresh signs (a popped block is then really freed); replaced grid
    buffers are picked up by the next forward."""
    path, _, _ = tiny_artifact
    model = bitstack.load(path, device="cpu", dtype="float16")
    set_kernels(model, True)
    module = next(m for m in _layers(model) if len(m.blocks) > 2)
    x = torch.randn(1, module.in_features).half()
    before = module(x)
    model.to("cpu")
    _check_packed(model)
    assert torch.equal(module(x), before)
    module.plane_step = module.plane_step * 2  # new grid tensors: the packed form must follow
    expected = torch.nn.functional.linear(
        x.float() * (module.input_scale.float() if module.input_scale is not None else 1), module.dense_weight(),
        None if module.bias is None else module.bias.float())
    assert _rel_err(module(x), expected) < REL_TOL[torch.float16]
    assert module.packed.step is module.plane_step
    set_kernels(model, False)
    storages = {b.signs.untyped_storage().data_ptr() for b in module.blocks}
    assert module.packed is None and len(storages) == len(module.blocks)
    assert all(b.signs.untyped_storage().nbytes() == b.signs.numel() for b in module.blocks)


def test_planes_more_blocks_than_the_kernels_take_use_the_pure_path(tiny_artifact):
    """A planes weight with more than 16 blocks (the kernels' limit) stays packed and computes on
    the pure path, with the same result."""
    from bitstack.kernels.dispatch import KERNEL_MAX_BLOCKS

    path, _, _ = tiny_artifact
    model = bitstack.load(path, device="cpu", dtype="float16")
    set_kernels(model, True)
    module = _layers(model)[0]
    while len(module.blocks) <= KERNEL_MAX_BLOCKS:  # copies of its blocks: still a valid planes stack
        module.blocks.append(Block(u=module.blocks[0].u, v=module.blocks[0].v, signs=module.blocks[0].signs.clone()))
    module.blocks_changed()
    assert module.packed is not None and module.packed.num_blocks == KERNEL_MAX_BLOCKS + 1
    x = torch.randn(2, module.in_features).half()
    scaled = x.float() * (module.input_scale.float() if module.input_scale is not None else 1)
    expected = torch.nn.functional.linear(scaled, module.dense_weight(), None if module.bias is None else module.bias.float())
    assert _rel_err(module(x), expected) < REL_TOL[torch.float16]


# ---- compiled models: the kernels are custom operators (bitstack.kernels.ops) -------------------
def test_compiled_model_has_no_graph_break_and_matches_eager(artifact):
    """``torch.compile(fullgraph=True)`` of a loaded model in kernel mode: the linears are the
    ``bitstack::`` operators (run here by Triton's interpreter), the logits equal eager mode's."""
    torch._dynamo.reset()
    m, prefix = _prefix(artifact)
    model = bitstack.load(artifact, prefix[m.floor_blocks + 5], device="cpu", dtype="float16")
    set_kernels(model, True)
    ids = torch.randint(4, model.config.vocab_size, (1, 5), generator=torch.Generator().manual_seed(0))
    eager = _logits(model, ids)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert torch.equal(compiled(ids).logits, eager)


def test_compiled_static_cache_generate_follows_resizes(artifact, monkeypatch):
    """transformers' compiled path (static cache, ``generate`` compiles the forward with
    ``fullgraph=True``): its tokens equal eager ``generate``'s, and after a grow or a shrink they
    equal those of a fresh load at the new budget.  The operators run the pure-PyTorch
    reference here (``TRITON_INTERPRET=0`` while generating; kernel mode needs the interpreter
    on the CPU only to pack)."""
    from transformers import CompileConfig

    torch._dynamo.reset()
    m, prefix = _prefix(artifact)
    small, large = prefix[m.floor_blocks + 3], prefix[len(m.stack)]
    vocab = m.model["config"]["vocab_size"]
    ids = torch.randint(4, vocab, (1, 4), generator=torch.Generator().manual_seed(1))
    config = CompileConfig(backend="aot_eager", fullgraph=True)
    config._compile_all_devices = True  # transformers compiles on accelerators only by default

    def generate(model, compiled):
        kwargs = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
        if compiled:
            kwargs.update(cache_implementation="static", compile_config=config)
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        try:
            with torch.no_grad():
                return model.generate(ids, **kwargs)[0, ids.shape[1]:].tolist()
        finally:
            monkeypatch.setenv("TRITON_INTERPRET", "1")

    def fresh(budget):
        """A load at ``budget`` in kernel mode (switched after the load, then resized to the
        prefix that kernel mode's repack room leaves at that budget)."""
        model = bitstack.load(artifact, budget, device="cpu", dtype="float16")
        set_kernels(model, True)
        bitstack.resize(model, budget)
        return model

    model = fresh(small)
    first = generate(model, compiled=True)
    assert first == generate(model, compiled=False)
    bitstack.resize(model, large)
    assert generate(model, compiled=True) == generate(fresh(large), compiled=False)
    bitstack.resize(model, small)
    assert generate(model, compiled=True) == first
