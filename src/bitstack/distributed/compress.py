"""Compression over several ranks: each layer's decompositions spread over a process group.

Rank 0 runs :func:`bitstack.compress` as on one device (calibration pass, scales, folds, the
work directory, the artifact) with :class:`DecompositionPool` as its ``decompose``: for each
layer, the weights' decompositions (the expensive step) are assigned to the ranks by
:func:`assign` (longest first, to the least loaded rank); rank 0 sends each worker its tasks
(scaled weight, Hessian, seed), decomposes its own, and receives the workers' results.  The other
ranks run :func:`serve` (no model, no files): receive tasks, decompose them on their device,
send the results back.  ``Codec.decompose`` is a pure function of its arguments, so on ranks of
one device type the artifact has the bytes of a one-device run with the same settings.

Tensors travel as pickled CPU tensors (``send_object_list``): a weight and its Hessian to a
worker, its blocks back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist

from bitstack.codecs import get_codec
from bitstack.codecs.base import Decomposition
from bitstack.compressor import compress
from bitstack.decomposition import DecomposeTask
from bitstack.errors import BitstackError, InputError


def assign(costs: Sequence[int], world: int) -> list[int]:
    """The rank of each task: tasks by decreasing cost (ties: in order), each to the rank with the
    least cost so far (ties: the lowest rank).  Pure."""
    if world < 1:
        raise InputError(f"a world of {world} ranks cannot decompose anything: use at least 1")
    load = [0] * world
    owner = [0] * len(costs)
    for task in sorted(range(len(costs)), key=lambda t: (-costs[t], t)):
        peer = min(range(world), key=lambda r: (load[r], r))
        owner[task] = peer
        load[peer] += costs[task]
    return owner


def _to_cpu(result: Decomposition) -> Decomposition:
    return Decomposition(result.params, [b.map(lambda t: t.cpu()) for b in result.blocks],
                         {k: v.cpu() for k, v in result.base.items()}, list(result.residual_sq))


def _global(group, peer: int) -> int:
    return peer if group is None else dist.get_global_rank(group, peer)


def _send(message, peer: int, group) -> None:
    dist.send_object_list([message], dst=_global(group, peer), group=group)


def _receive(peer: int, group):
    box = [None]
    dist.recv_object_list(box, src=_global(group, peer), group=group)
    return box[0]


class DecompositionPool:
    """Rank 0's ``decompose`` for :func:`bitstack.compress`, spread over the ranks of ``group``
    (which run :func:`serve`).  :meth:`close` releases the workers."""

    def __init__(self, group=None):
        self.group = group
        self.world = dist.get_world_size(group)
        self.closed = False

    def __call__(self, codec: str, settings, tasks: list[DecomposeTask], *, niter: int,
                 calib_tokens: int) -> list[Decomposition]:
        owner = assign([t.weight.numel() for t in tasks], self.world)
        for peer in range(1, self.world):
            mine = [(i, t.weight.cpu(), None if t.hessian is None else t.hessian.cpu(), t.seed)
                    for i, t in enumerate(tasks) if owner[i] == peer]
            if mine:
                _send(("work", codec, settings, niter, calib_tokens, mine), peer, self.group)
        results: list = [None] * len(tasks)
        failure: BaseException | None = None
        try:
            for i, task in enumerate(tasks):
                if owner[i] == 0:
                    results[i] = get_codec(codec).decompose(task.weight, settings, niter=niter, hessian=task.hessian,
                                                            calib_tokens=calib_tokens, seed=task.seed)
        except BaseException as err:  # receive the workers' replies first: they are sending them
            failure = err
        for peer in sorted(set(owner) - {0}):
            reply = _receive(peer, self.group)
            if reply[0] == "error":
                failure = failure or InputError(f"rank {peer} could not decompose a weight: {reply[1]}")
                continue
            for i, result in reply[1]:
                results[i] = result
        if failure is not None:
            raise failure
        return results

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            for peer in range(1, self.world):
                _send(("stop",), peer, self.group)


def serve(device: torch.device | str | None = None, group=None) -> int:
    """A worker rank's loop: decompose what rank 0 sends, on ``device``, until it stops the pool.
    Returns how many weights this rank decomposed."""
    from bitstack.devices import resolve_device

    device = resolve_device(device)
    done = 0
    while True:
        message = _receive(0, group)
        if message[0] == "stop":
            return done
        _, codec, settings, niter, calib_tokens, work = message
        try:
            out = [(i, _to_cpu(get_codec(codec).decompose(w.to(device), settings, niter=niter,
                                                         hessian=None if h is None else h.to(device),
                                                         calib_tokens=calib_tokens, seed=seed)))
                   for i, w, h, seed in work]
        except BitstackError as err:
            _send(("error", str(err)), 0, group)
            continue
        done += len(out)
        _send(("done", out), 0, group)


def compress_parallel(model, output: str | Path, config=None, *, group=None, device=None, **options) -> Path:
    """:func:`bitstack.compress` with every layer's decompositions spread over the ranks of
    ``group`` (default: the initialised default group).  Every rank calls it; only rank 0's
    ``model`` (and ``tokenizer`` in ``options``) are used, the others may pass None.  ``device``
    is this rank's.  Returns the artifact path on every rank; a ``BitstackError`` of rank 0 is
    raised on every rank."""
    if not dist.is_available() or not dist.is_initialized():
        raise InputError("compress_parallel needs an initialised torch.distributed process group (init_process_group)")
    peer = dist.get_rank(group)
    outcome: list = [None]
    failure: BaseException | None = None
    if peer == 0:
        pool = DecompositionPool(group)
        try:
            outcome[0] = ("ok", str(compress(model, output, config, device=device, decompose=pool, **options)))
        except BaseException as err:  # every rank must still reach the broadcast below
            failure = err
            outcome[0] = ("error", type(err).__name__, str(err))
        finally:
            pool.close()
    else:
        serve(device, group)
    dist.broadcast_object_list(outcome, src=_global(group, 0), group=group)
    if failure is not None:
        raise failure
    if outcome[0][0] == "error":
        kind = InputError if outcome[0][1] == "InputError" else BitstackError
        raise kind(f"rank 0: {outcome[0][2]}")
    return Path(outcome[0][1])
