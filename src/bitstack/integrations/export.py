"""Exporting an artifact at a budget: :func:`export` (the library call) and ``bitstack export`` (the
command, whose options are the fields of :class:`ExportConfig`).

Formats:

* ``hf``: a plain float transformers folder (``config.json``, ``model.safetensors``, the
  tokenizer): the model that ``bitstack.load`` gives at that budget, with every decomposed linear
  made dense: W = Ŵ · diag(input_scale) (Ŵ the sum of the loaded blocks, computed in float32,
  then cast to ``dtype``), so ``y = x Wᵀ + b`` is the BitStack layer's ``(x ⊙ input_scale) Ŵᵀ + b``.
  Loads anywhere transformers does, without bitstack; its size is the dense model's.
* ``bitstack-hf``: the artifact itself (every block, any budget) plus transformers' files, whose
  ``quantization_config`` records the budget: ``from_pretrained`` after
  ``import bitstack.integrations.hf`` (:mod:`bitstack.runtime.save`).
* ``gguf``: one GGUF file for llama.cpp (llama architecture), each weight exactly a Q4_1/Q5_1
  grid where its prefix is one, else float16, with the error of every tensor in the report
  (:mod:`bitstack.integrations.gguf`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bitstack.artifact.atomic import atomic_folder, fsync_dir
from bitstack.errors import InputError
from bitstack.integrations.dense import densify

FORMATS = ("hf", "bitstack-hf", "gguf")


@dataclass(frozen=True)
class ExportConfig:
    """What ``bitstack export`` writes; each field is one option of the command."""

    format: str = field(default="hf", metadata={"choices": FORMATS, "help": "hf: a plain float transformers folder; "
                        "bitstack-hf: the artifact with transformers' files (from_pretrained at any budget); "
                        "gguf: one GGUF file for llama.cpp (llama architecture)"})
    memory: str | None = field(default=None, metadata={"help": "budget, e.g. 120MB: the prefix bitstack.load holds "
                               "at the artifact's dtype (default: the whole stack)"})
    dtype: str | None = field(default=None, metadata={"choices": ("bfloat16", "float16", "float32"),
                              "help": "float type of the exported weights (default: the artifact's; gguf: float16)"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing output of the same format"})

    def __post_init__(self):
        if self.format not in FORMATS:
            raise InputError(f"unknown export format {self.format!r}: use one of {', '.join(FORMATS)}")
        if self.dtype not in (None, "bfloat16", "float16", "float32"):
            raise InputError(f"--dtype must be bfloat16, float16 or float32, got {self.dtype!r}")
        if self.memory is not None:
            from bitstack.memory import parse_memory

            parse_memory(self.memory)


def export(artifact: str | Path, output: str | Path, config: ExportConfig = ExportConfig()) -> dict[str, Any]:
    """Write ``artifact`` at ``config.memory`` to ``output`` in ``config.format``; returns a
    report (``format``, ``output``, ``blocks``, ``resident_bytes``, and per format its details)."""
    output = Path(output)
    _check_output(output, config)
    if config.format == "bitstack-hf":
        return _export_bitstack_hf(artifact, output, config)
    from bitstack.runtime.loader import load

    gguf = config.format == "gguf"
    blocks, resident, at = _prefix(artifact, config.memory, "float32" if gguf else config.dtype)
    model = load(artifact, at, device="cpu", dtype="float32" if gguf else config.dtype)
    reader = model.bitstack.reader
    try:
        if model.bitstack.loaded != blocks:
            raise RuntimeError(f"export loaded {model.bitstack.loaded} blocks, the budget holds {blocks}")
        report = {"format": config.format, "output": str(output), "blocks": blocks, "resident_bytes": resident}
        if gguf:
            report["tensors"] = _write_gguf_file(model, reader, output, config)
        else:
            _write_dense_folder(model, artifact, output, config)
    finally:
        reader.close()
    return report


def _prefix(artifact, memory, dtype) -> tuple[int, int, int | None]:
    """(blocks, resident bytes) of the prefix ``memory`` holds at the artifact's storage dtype (what
    the budget of ``bitstack.load`` means by default), and the budget selecting the same prefix
    when loaded in ``dtype``."""
    from bitstack.artifact.opening import open_artifact
    from bitstack.config import resolve_dtype
    from bitstack.memory import parse_memory
    from bitstack.runtime.budget import blocks_for_budget, prefix_bytes_at

    with open_artifact(artifact, verify=False) as reader:
        manifest = reader.manifest
    stored = resolve_dtype(None, manifest.compression.get("dtype", "bfloat16"))
    blocks = blocks_for_budget(manifest, None if memory is None else parse_memory(memory), stored)
    target = resolve_dtype(dtype, manifest.compression.get("dtype", "bfloat16"))
    at = None if memory is None else prefix_bytes_at(manifest, target)[blocks]
    return blocks, prefix_bytes_at(manifest, stored)[blocks], at


def _check_output(output: Path, config: ExportConfig) -> None:
    if output.exists() and not config.overwrite:
        raise InputError(f"{output} exists: pass --overwrite to replace it, or choose another output")
    if output.exists() and config.format == "gguf" and not output.is_file():
        raise InputError(f"{output} is a folder: a GGUF export writes one file")
    if output.exists() and config.format != "gguf" and not (output / "config.json").is_file():
        raise InputError(f"{output} exists and is not a transformers folder: choose another output")
    if not output.parent.is_dir():
        raise InputError(f"the folder of {output} does not exist: create {output.parent} first")


def _export_bitstack_hf(artifact, output: Path, config: ExportConfig) -> dict[str, Any]:
    from bitstack.artifact.opening import open_artifact
    from bitstack.config import resolve_dtype
    from bitstack.runtime.save import write_artifact_folder

    blocks, resident, at = _prefix(artifact, config.memory, config.dtype)
    with open_artifact(artifact, verify=False) as reader:
        dtype = resolve_dtype(config.dtype, reader.manifest.compression.get("dtype", "bfloat16"))
        write_artifact_folder(reader.path, output, reader.manifest, memory=at, dtype=str(dtype).removeprefix("torch."),
                              overwrite=config.overwrite)
    return {"format": config.format, "output": str(output), "blocks": blocks, "resident_bytes": resident}


def _write_dense_folder(model, artifact, output: Path, config: ExportConfig) -> None:
    from bitstack.artifact.opening import open_artifact

    dtype = model.bitstack.dtype
    with open_artifact(artifact, verify=True) as reader:
        tokenizer = reader.load_tokenizer()
    densify(model, dtype)
    with atomic_folder(output) as work:
        model.config.dtype = str(dtype).removeprefix("torch.")
        model.save_pretrained(work)
        if tokenizer is not None:
            tokenizer.save_pretrained(work)


def _write_gguf_file(model, reader, output: Path, config: ExportConfig) -> list[dict]:
    from bitstack.integrations.gguf import write_gguf

    float_type = "float32" if config.dtype == "float32" else "float16"
    if config.dtype == "bfloat16":
        raise InputError("GGUF export writes float16 or float32 tensors: pass --dtype float16 or float32")
    tokenizer = reader.load_tokenizer()
    work = output.with_name(f".{output.name}.partial-{os.getpid()}")
    try:
        report = write_gguf(model, tokenizer, work, float_type=float_type)
        os.replace(work, output)
    except OSError as err:
        raise InputError(f"cannot write {output}: {err.strerror or err}") from err
    finally:
        work.unlink(missing_ok=True)
    fsync_dir(output.parent)
    return report


def config_fields() -> tuple[dataclasses.Field, ...]:
    """The fields of :class:`ExportConfig`, one command-line option each."""
    return dataclasses.fields(ExportConfig)
