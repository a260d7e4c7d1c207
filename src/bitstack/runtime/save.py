"""Saving a loaded model: ``model.save_pretrained(d)`` writes a BitStack artifact folder.

A model of :func:`bitstack.load` (or of transformers' ``from_pretrained`` through
:mod:`bitstack.integrations.hf`) holds a prefix of an artifact's block stack, not dense weights,
so transformers' own ``save_pretrained`` would write only the few buffers it can see (a broken
model).  :func:`save_pretrained` instead writes

* a copy of the whole artifact (``manifest.json``, ``base.safetensors``, every block shard,
  ``tokenizer/``), each file checked against the manifest's checksum as it is copied, so the
  folder loads at any budget with :func:`bitstack.load`;
* transformers' files (:func:`transformers_files`): ``config.json`` with a
  ``quantization_config`` of ``quant_method`` ``"bitstack"`` whose ``memory`` is the model's
  budget (so ``from_pretrained`` rebuilds the same prefix), ``generation_config.json``, and the
  tokenizer's files at the top level (for ``AutoTokenizer`` and ``pipeline``).

The folder is assembled in a temporary sibling and renamed into place: a failure leaves nothing
half-written.  An existing folder is replaced only if it is itself an artifact.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from bitstack.artifact.atomic import atomic_folder, atomic_write_bytes
from bitstack.artifact.manifest import MANIFEST_NAME
from bitstack.errors import ArtifactError, InputError

QUANT_METHOD = "bitstack"  # transformers' quantization_config "quant_method" of an artifact folder
CONFIG_NAME = "config.json"
GENERATION_CONFIG_NAME = "generation_config.json"


def quantization_config(memory: int | str | None, verify: bool = True) -> dict[str, Any]:
    """The ``quantization_config`` of an artifact folder's ``config.json``: ``memory`` is the budget
    ``from_pretrained`` loads at (None: the whole stack), ``verify`` checks every tensor read."""
    return {"quant_method": QUANT_METHOD, "memory": memory, "verify": bool(verify)}


def transformers_files(manifest, *, memory: int | str | None, dtype: str | None = None) -> dict[str, bytes]:
    """{file name: bytes} of the files that make an artifact folder loadable by transformers'
    ``from_pretrained``: ``config.json`` (the model's config, the ``quantization_config``, and
    ``transformers_weights`` naming the base file, which holds every tensor transformers loads
    itself) and ``generation_config.json`` when the artifact has one.  ``dtype``: the config's
    ``dtype`` (default: the artifact's storage dtype)."""
    config = dict(manifest.model["config"])
    config.pop("auto_map", None)  # never name code to run
    dtype = dtype or manifest.compression.get("dtype", "bfloat16")
    config.update(dtype=dtype, torch_dtype=dtype, transformers_weights=manifest.base["file"],
                  quantization_config=quantization_config(memory))
    files = {CONFIG_NAME: (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()}
    if manifest.model.get("generation_config"):
        files[GENERATION_CONFIG_NAME] = (json.dumps(manifest.model["generation_config"], indent=2) + "\n").encode()
    return files


def artifact_files(manifest) -> dict[str, tuple[str, str]]:
    """{relative path: (digest kind, expected hex digest)} of every file of an artifact but its
    manifest: the base, the block shards and the tokenizer's files."""
    files = {manifest.base["file"]: ("sha256", manifest.base["sha256"])}
    files.update({shard.file: ("sha256", shard.sha256) for shard in manifest.shards})
    if manifest.tokenizer:
        folder = manifest.tokenizer["dir"]
        files.update({f"{folder}/{name}": ("sha256", digest) for name, digest in manifest.tokenizer["files"].items()})
    return files


def write_loadable(folder: str | Path, manifest, *, memory: int | str | None, dtype: str | None = None) -> None:
    """Add transformers' files to the artifact folder ``folder`` (whose manifest is ``manifest``):
    :func:`transformers_files` and the tokenizer's files at the top level.  Artifact files are
    never touched; each new file is written atomically."""
    folder = Path(folder)
    files = transformers_files(manifest, memory=memory, dtype=dtype)
    if manifest.tokenizer:
        for name in manifest.tokenizer["files"]:
            if "/" not in name and name not in artifact_files(manifest) and name != MANIFEST_NAME:
                files[name] = (folder / manifest.tokenizer["dir"] / name).read_bytes()
    for name, data in files.items():
        atomic_write_bytes(folder / name, data)


def copy_artifact(source: str | Path, target: str | Path, manifest) -> None:
    """Copy the artifact at ``source`` into the new folder ``target`` (which must not exist),
    checking each file's sha256 against ``manifest`` while copying; :class:`ArtifactError` names
    a file that does not match."""
    source, target = Path(source), Path(target)
    target.mkdir(parents=True)
    for name, (_, expected) in artifact_files(manifest).items():
        out = target / name
        out.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with open(source / name, "rb") as src, open(out, "wb") as dst:
            while chunk := src.read(1 << 22):
                digest.update(chunk)
                dst.write(chunk)
        if digest.hexdigest() != expected:
            raise ArtifactError(f"{source / name} is corrupted: its sha256 does not match the manifest")
    shutil.copyfile(source / MANIFEST_NAME, target / MANIFEST_NAME)  # last, as the writer does


def write_artifact_folder(source: str | Path, target: str | Path, manifest, *, memory: int | str | None,
                          dtype: str | None = None, overwrite: bool = False) -> Path:
    """Copy the artifact at ``source`` (its manifest: ``manifest``) to ``target`` with
    transformers' files (:func:`write_loadable`, budget ``memory``), assembled in a temporary
    sibling and renamed into place.  An existing ``target`` is replaced only with ``overwrite``
    and only if it is an artifact folder itself."""
    source, target = Path(source), Path(target)
    if target.exists():
        if target.resolve() == source.resolve():
            raise InputError(f"{target} is the artifact being copied: write to another folder")
        if not overwrite or not (target / MANIFEST_NAME).is_file():
            raise InputError(f"{target} exists{'' if overwrite else ' (pass overwrite)'}; only an artifact folder "
                             "can be replaced: choose a new folder or remove it")
    with atomic_folder(target) as work:
        copy_artifact(source, work, manifest)
        write_loadable(work, manifest, memory=memory, dtype=dtype)
    return target


def save_loaded(model, save_directory: str | Path, *, memory: int | str | None = ...,
                overwrite: bool = True) -> Path:
    """Write the artifact of a loaded BitStack model, loadable by ``bitstack.load`` and (through
    :mod:`bitstack.integrations.hf`) by ``from_pretrained``, into ``save_directory``.

    ``memory``: the budget recorded in ``config.json`` (default: the model's current budget, so
    ``from_pretrained(save_directory)`` holds the same prefix).  Returns the folder."""
    from bitstack.runtime.stack import LiveStack

    state = getattr(model, "bitstack", None)
    if not isinstance(state, LiveStack):
        raise InputError("save_loaded() needs a model returned by bitstack.load() or from_pretrained of an artifact")
    url = getattr(state.reader, "url", None)  # a remote artifact: its local cache holds only what was read
    if url:
        raise InputError(f"save_pretrained copies a local artifact, and this model reads {url} through a partial "
                         "cache: load a local copy of the artifact to save it")
    budget = state.budget if memory is ... else memory
    dtype = str(state.dtype).removeprefix("torch.")
    return write_artifact_folder(state.reader.path, save_directory, state.manifest, memory=budget, dtype=dtype,
                                 overwrite=overwrite)


def _save_pretrained(model, save_directory, *args, **kwargs) -> None:
    """``model.save_pretrained`` of a loaded BitStack model (see the module docstring).  Options of
    transformers' method that cannot apply to an artifact are refused, never ignored."""
    unsupported = sorted(k for k, v in kwargs.items() if k not in ("safe_serialization", "is_main_process") and v not in (None, False))
    if args or kwargs.get("safe_serialization") is False or unsupported:
        raise InputError(f"save_pretrained of a BitStack model writes its artifact and takes no other option "
                         f"(got {', '.join(unsupported) or 'positional arguments'}); use bitstack.runtime.save.save_loaded")
    if kwargs.get("is_main_process", True):
        save_loaded(model, save_directory)


def install_save_hook(model) -> None:
    """Make ``model.save_pretrained`` write its artifact (this instance only)."""
    model.save_pretrained = functools.partial(_save_pretrained, model)
