"""The saved progress of a compression run, so that a killed run resumes where it stopped.

A compression writes into ``<out>.partial/``; its progress lives in ``<out>.partial/work/``:

- ``fingerprint.json``: what is compressed and how (settings, model source, a sha256 of the
  float weights, of the calibration file, the library versions, the device).  Written first.
  A restart with a different fingerprint does not resume: it is refused, or, with
  ``overwrite``, the old work is discarded.
- ``samples.safetensors``: the calibration token ids, int64 (nsamples, seqlen).
- ``layer-XXXXX.safetensors``, one per finished decoder layer: its residual blocks, the values of
  the layer's other parameters after folding (``state:NAME``), the run-time input scales
  (``input_scale:WEIGHT``), the codecs' base buffers (``base:WEIGHT.PART``) and the residual
  energies (``residual_sq:WEIGHT``, float64); the metadata holds the layer's manifest weight
  entries.
- ``progress.json``: the sha256 of every finished layer file, in layer order, rewritten after
  each layer.  A layer counts as finished only if its file matches.
- ``lock``: held (``flock``) by the process working here; the kernel drops it when the process dies.

Every file is written atomically (temporary name, fsync, rename), so a SIGKILL at any moment
leaves each file either absent or complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bitstack.artifact.atomic import atomic_write_bytes
from bitstack.artifact.manifest import WeightEntry
from bitstack.artifact.safetensors_io import read_header, read_into, sha256_file, tensor_bytes, write_safetensors
from bitstack.artifact.writer import partial_dir
from bitstack.errors import ArtifactError, BitstackError, InputError

WORK_DIR = "work"
FINGERPRINT = "fingerprint.json"
SAMPLES = "samples.safetensors"
PROGRESS = "progress.json"
LOCK = "lock"

_STATE, _SCALE, _ENERGY, _BASE = "state:", "input_scale:", "residual_sq:", "base:"


@dataclass
class LayerRecord:
    """What the rest of a compression needs of one finished layer (besides its blocks).

    weights: the layer's manifest entries, in decomposition order.
    residual_sq: per weight name, the ``niter + 1`` residual energies.
    input_scales: per weight name without a fold, the run-time scale 1/s (float32 (in,)).
    state: the layer's parameters other than the decomposed weights, after folding, by name
        relative to the layer.
    base: per weight name, its codec's base buffers {part: tensor} (``Codec.base_buffers``).
    """

    weights: list[WeightEntry]
    residual_sq: dict[str, tuple[float, ...]]
    input_scales: dict[str, torch.Tensor]
    state: dict[str, torch.Tensor]
    base: dict[str, dict[str, torch.Tensor]] = dataclasses.field(default_factory=dict)


def weights_digest(model: nn.Module) -> str:
    """sha256 over every tensor of ``model.state_dict()``: names, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode())
        digest.update(tensor_bytes(tensor))
    return digest.hexdigest()


def run_fingerprint(config_dict: dict, source: str, model: nn.Module, device: torch.device,
                    calib_digest: str | None) -> dict[str, Any]:
    """Everything a compression's result depends on, as a JSON-able dict."""
    import transformers

    from bitstack import __version__

    return {
        "bitstack": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(device),
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "config": config_dict,
        "source": source,
        "model_config": json.loads(model.config.to_json_string(use_diff=False)),
        "weights_sha256": weights_digest(model),
        "calib_sha256": calib_digest,
    }


def _differences(old: Any, new: dict[str, Any]) -> str:
    if not isinstance(old, dict):
        return "unreadable fingerprint"
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict) and key == "config":
            changed += [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        else:
            changed.append(key.replace("_sha256", ""))
    return ", ".join(changed[:6]) or "unknown"


class WorkDir:
    """The ``work/`` folder of one ``<out>.partial/`` directory, locked by this process."""

    def __init__(self, partial: Path):
        self.partial = partial
        self.dir = partial / WORK_DIR
        self._lock_handle = None

    # ---- opening ------------------------------------------------------------------------
    @classmethod
    def resume(cls, output: str | Path, fingerprint: dict[str, Any], *, overwrite: bool) -> "WorkDir | None":
        """The unfinished work of the same run at ``output``, locked; ``None`` if there is none.

        Work of a different run is refused with :class:`InputError`, unless ``overwrite``, in
        which case it is deleted.  A ``.partial`` folder that holds no progress is deleted.
        """
        partial = partial_dir(output)
        if not partial.exists() and not partial.is_symlink():
            return None
        if not partial.is_dir() or partial.is_symlink():
            raise InputError(f"{partial} exists and is not a folder: remove it")
        work = cls(partial)
        work.dir.mkdir(exist_ok=True)
        work._lock()
        try:
            stored = work._read_fingerprint()
            if stored == fingerprint:
                work._remove_temporaries()
                return work
            if stored is not None and not overwrite:
                raise InputError(
                    f"{partial} holds an unfinished compression with other inputs or settings "
                    f"({_differences(stored, fingerprint)}): rerun that command to resume it, or pass "
                    "--overwrite (overwrite=True) to discard it"
                )
        except BaseException:
            work.release()
            raise
        work.remove()  # a different run's work (overwrite) or a folder without progress
        return None

    @classmethod
    def create(cls, output: str | Path, fingerprint: dict[str, Any]) -> "WorkDir":
        """A fresh ``<out>.partial/work/``, locked, with the fingerprint written."""
        partial = partial_dir(output)
        partial.mkdir()
        work = cls(partial)
        work.dir.mkdir()
        work._lock()
        atomic_write_bytes(work.dir / FINGERPRINT, json.dumps(fingerprint, indent=1, sort_keys=True).encode())
        return work

    def _lock(self) -> None:
        handle = open(self.dir / LOCK, "a+b")
        if sys.platform != "win32":
            import fcntl

            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                handle.close()
                raise InputError(f"another bitstack compression is writing {self.partial}: wait for it, or stop it") from err
        self._lock_handle = handle

    def release(self) -> None:
        """Drop the lock (the files stay)."""
        if self._lock_handle is not None:
            self._lock_handle.close()
            self._lock_handle = None

    def remove(self) -> None:
        """Delete the whole ``<out>.partial/`` folder."""
        self.release()
        shutil.rmtree(self.partial, ignore_errors=True)

    def remove_work(self) -> None:
        """Delete ``work/`` only (the artifact files next to it are complete)."""
        self.release()
        shutil.rmtree(self.dir)

    def clear_outputs(self) -> None:
        """Delete everything of ``<out>.partial/`` but ``work/`` (leftovers of a killed final stage)."""
        for entry in self.partial.iterdir():
            if entry.name == WORK_DIR:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def _remove_temporaries(self) -> None:
        for entry in self.dir.iterdir():
            if entry.name.startswith(".") and ".tmp-" in entry.name:
                entry.unlink(missing_ok=True)

    def _read_fingerprint(self) -> Any:
        try:
            return json.loads((self.dir / FINGERPRINT).read_bytes())
        except (OSError, ValueError):
            return None

    # ---- calibration samples ------------------------------------------------------------
    def load_samples(self, nsamples: int, seqlen: int) -> torch.Tensor | None:
        """The saved calibration ids, or ``None`` if they were not saved yet."""
        path = self.dir / SAMPLES
        if not path.is_file():
            return None
        tensors, _ = _read_all(path)
        samples = tensors.get("samples")
        if samples is None or samples.dtype != torch.int64 or tuple(samples.shape) != (nsamples, seqlen):
            raise ArtifactError(f"{path} does not hold {nsamples} x {seqlen} token ids: pass --overwrite to start over")
        return samples

    def has_samples(self) -> bool:
        return (self.dir / SAMPLES).is_file()

    def save_samples(self, samples: torch.Tensor) -> None:
        write_safetensors(self.dir / SAMPLES, [("samples", samples.to(torch.int64).cpu())], {"bitstack": "work-samples"})

    # ---- layers -------------------------------------------------------------------------
    def layer_path(self, index: int) -> Path:
        return self.dir / f"layer-{index:05d}.safetensors"

    def _progress(self) -> list[str]:
        try:
            data = json.loads((self.dir / PROGRESS).read_bytes())
        except (OSError, ValueError):
            return []
        layers = data.get("layers") if isinstance(data, dict) else None
        return [d for d in layers if isinstance(d, str)] if isinstance(layers, list) else []

    def finished_layers(self, count: int) -> int:
        """How many leading layers are finished: their files exist and match ``progress.json``."""
        done = 0
        for index, digest in enumerate(self._progress()[:count]):
            path = self.layer_path(index)
            try:
                ok = path.is_file() and sha256_file(path) == digest
            except BitstackError:
                ok = False
            if not ok:
                break
            done += 1
        return done

    def save_layer(self, index: int, blocks: list[tuple[str, torch.Tensor]], record: LayerRecord) -> None:
        """Write layer ``index``'s file, then record it as finished."""
        tensors = list(blocks)
        tensors += [(_STATE + name, t.detach().cpu()) for name, t in record.state.items()]
        tensors += [(_SCALE + name, t.detach().cpu()) for name, t in record.input_scales.items()]
        tensors += [(_ENERGY + name, torch.tensor(e, dtype=torch.float64)) for name, e in record.residual_sq.items()]
        tensors += [(f"{_BASE}{name}.{part}", t.detach().cpu()) for name, parts in record.base.items()
                    for part, t in parts.items()]
        metadata = {"bitstack": "work-layer", "layer": str(index),
                    "weights": json.dumps([dataclasses.asdict(w) for w in record.weights])}
        digest = write_safetensors(self.layer_path(index), tensors, metadata)
        digests = self._progress()[:index] + [digest]
        atomic_write_bytes(self.dir / PROGRESS, json.dumps({"layers": digests}, indent=0).encode())

    def load_layer(self, index: int) -> LayerRecord:
        """The record saved with layer ``index`` (its blocks stay on disk)."""
        path = self.layer_path(index)
        tensors, metadata = _read_all(path, skip=lambda name: ":" not in name)
        try:
            weights = [WeightEntry(**w) for w in json.loads(metadata["weights"])]
        except (KeyError, TypeError, ValueError) as err:
            raise ArtifactError(f"{path} has no valid weight list: pass --overwrite to start over") from err
        record = LayerRecord(weights, {}, {}, {})
        for name, tensor in tensors.items():
            kind, _, key = name.partition(":")
            if kind + ":" == _STATE:
                record.state[key] = tensor
            elif kind + ":" == _SCALE:
                record.input_scales[key] = tensor
            elif kind + ":" == _ENERGY:
                record.residual_sq[key] = tuple(tensor.tolist())
            elif kind + ":" == _BASE:
                weight, _, part = key.rpartition(".")
                record.base.setdefault(weight, {})[part] = tensor
        return record


def _read_all(path: Path, skip=lambda name: False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors of a work file (those ``skip`` does not exclude) and its metadata."""
    header = read_header(path)
    out: dict[str, torch.Tensor] = {}
    with open(path, "rb") as handle:
        for name, info in header.tensors.items():
            if skip(name):
                continue
            raw = read_into(handle, header.data_start + info.begin, info.end - info.begin, what=str(path))
            out[name] = raw.view(info.dtype).reshape(info.shape)
    return out, header.metadata
