"""Split-K reduction shared by the decode kernels (imports Triton: load lazily).

Programs that share a tile of output rows but cover different column ranges add their float32
partials ``acc`` (BN rows × MP tokens) into a float32 workspace with atomics; the last one to
finish (a per-row-tile counter) reads the total, adds the bias, writes ``y`` in its dtype and
re-zeroes the workspace tile and the counter, so one launch does everything and the workspace is
zero again between calls.  Workspace and counters are cached per (device, M, N, BN):
``4·M·N + 4·ceil(N/BN)`` bytes.  Calls that share a workspace must be serialised (one stream),
as a layer's forward calls are.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_WORKSPACES: dict = {}


def sm_count(device: torch.device) -> int:
    """Multiprocessors of a CUDA device; 4 elsewhere (the Triton interpreter on the CPU)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def split_k(n_tiles: int, n_ktiles: int, splits: int | None, programs_per_sm: int,
            device: torch.device) -> tuple[int, int]:
    """(splits, K tiles per split) for ``n_tiles`` row tiles of ``n_ktiles`` K tiles each:
    ``splits`` if given, else enough for ``programs_per_sm`` programs per SM; at least 1, at most
    one split per K tile, and no split left empty."""
    if splits is None:
        splits = triton.cdiv(programs_per_sm * sm_count(device), n_tiles)
    splits = max(1, min(splits, n_ktiles))
    per_split = triton.cdiv(n_ktiles, splits)
    return triton.cdiv(n_ktiles, per_split), per_split


def splitk_workspace(device: torch.device, M: int, N: int, BN: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 (M·N,) zeros, int32 (ceil(N/BN),) zeros), cached per (device, M, N, BN)."""
    key = (str(device), M, N, BN)
    buf = _WORKSPACES.get(key)
    if buf is None:
        buf = (torch.zeros(M * N, dtype=torch.float32, device=device),
               torch.zeros(triton.cdiv(N, BN), dtype=torch.int32, device=device))
        _WORKSPACES[key] = buf
    return buf


@triton.jit
def store_rows(acc, offs_n, nmask, offs_m, mmask, N, b_ptr, y_ptr, ws_ptr, cnt_ptr, pid_n, n_splits, stride_ym,
               SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Write y[m, n] = acc[n, m] (+ bias[n]) in y's dtype, for acc float32 (BN, MP); with SPLIT,
    through the workspace (module docstring)."""
    DT: tl.constexpr = y_ptr.dtype.element_ty
    omask = nmask[:, None] & mmask[None, :]
    if SPLIT:
        ws_offs = offs_m[None, :] * N + offs_n[:, None]
        tl.atomic_add(ws_ptr + ws_offs, acc, mask=omask, sem="relaxed")
        tl.debug_barrier()
        count = tl.atomic_add(cnt_ptr + pid_n, 1, sem="acq_rel")
        if count == n_splits - 1:
            zero = tl.zeros(acc.shape, dtype=tl.float32)
            total = tl.atomic_add(ws_ptr + ws_offs, zero, mask=omask, sem="relaxed")  # coherent read (L2)
            total = tl.where(omask, total, 0.0)  # masked lanes hold no value (the interpreter: garbage)
            tl.store(ws_ptr + ws_offs, zero, mask=omask)
            if HAS_BIAS:
                total += tl.load(b_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)[:, None]
            tl.store(y_ptr + offs_m[None, :] * stride_ym + offs_n[:, None], total.to(DT), mask=omask)
            tl.atomic_xchg(cnt_ptr + pid_n, 0, sem="relaxed")
    else:
        if HAS_BIAS:
            acc += tl.load(b_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)[:, None]
        tl.store(y_ptr + offs_m[None, :] * stride_ym + offs_n[:, None], acc.to(DT), mask=omask)
