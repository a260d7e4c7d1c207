"""Split-K reduction shared by the decode kernels (imports Triton: load lazily).

Programs that share a tile of output rows but cover different column ranges add their float32
partials ``acc`` (BN rows × MP tokens) into a float32 workspace with atomics; the last one to
finish (a per-row-tile counter) reads the total, adds the bias, writes ``y`` in its dtype and
re-zeroes the workspace tile and the counter, so one launch does everything and the workspace is
zero again between calls.  One workspace per (device, N) serves every kernel and token count:
float32 (rows·N,) for up to ``rows`` tokens and int32 (N,) counters (one per row tile of any
height), ``4·rows·N + 4·N`` bytes, grown when a call needs more rows.  A repack on CUDA reserves
it (:func:`reserve_workspace`), so that no call under a CUDA-graph capture or a compiled
warm-up allocates it (cudagraph trees own the memory allocated there).  Calls that share a
workspace must be serialised (one stream), as a layer's forward calls are.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bitstack.kernels._checks import cdiv

_WORKSPACES: dict = {}


_SM_COUNTS: dict = {}


def sm_count(device: torch.device) -> int:
    """Multiprocessors of a CUDA device (cached); 4 elsewhere (the Triton interpreter on the CPU)."""
    if device.type != "cuda":
        return 4
    count = _SM_COUNTS.get(device.index)
    if count is None:
        count = torch.cuda.get_device_properties(device).multi_processor_count
        _SM_COUNTS[device.index] = count
    return count


def split_k(n_tiles: int, n_ktiles: int, splits: int | None, programs_per_sm: int,
            device: torch.device) -> tuple[int, int]:
    """(splits, K tiles per split) for ``n_tiles`` row tiles of ``n_ktiles`` K tiles each:
    ``splits`` if given, else enough for ``programs_per_sm`` programs per SM; at least 1, at most
    one split per K tile, and no split left empty."""
    if splits is None:
        splits = cdiv(programs_per_sm * sm_count(device), n_tiles)
    splits = max(1, min(splits, n_ktiles))
    per_split = cdiv(n_ktiles, splits)
    return cdiv(n_ktiles, per_split), per_split


def splitk_workspace(device: torch.device, M: int, N: int, BN: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 zeros of at least M·N elements, int32 zeros of at least ceil(N/BN)), the cached
    workspace of (device, N) (module docstring), grown to M rows if it holds fewer."""
    buf = _WORKSPACES.get((str(device), N))
    if buf is None or buf[0].numel() < M * N:
        buf = reserve_workspace(device, N, M)
    return buf


def reserve_workspace(device: torch.device, N: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Make the cached workspace of (device, N) hold at least ``rows`` tokens; returns it."""
    key = (str(device), N)
    buf = _WORKSPACES.get(key)
    if buf is None or buf[0].numel() < rows * N:
        buf = (torch.zeros(max(1, rows) * N, dtype=torch.float32, device=device),
               torch.zeros(N, dtype=torch.int32, device=device))
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
