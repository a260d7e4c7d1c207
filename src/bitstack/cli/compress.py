"""``bitstack compress``: its options are generated from :class:`bitstack.config.CompressConfig`,
so the CLI and the Python API share one set of defaults."""

from __future__ import annotations

import argparse
import dataclasses
import time

from bitstack.cli.common import settings_options
from bitstack.config import CompressConfig


def config_options(parser: argparse.ArgumentParser) -> None:
    """One option per :class:`CompressConfig` field (but ``version``), with its default and help."""
    settings_options(parser.add_argument_group("compression settings (defaults from CompressConfig)"), CompressConfig,
                     skip=("version",))


def config_from_args(args: argparse.Namespace) -> CompressConfig:
    """The :class:`CompressConfig` of the options :func:`config_options` added."""
    return CompressConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(CompressConfig) if f.name != "version"})


def run(args: argparse.Namespace) -> int:
    from bitstack.artifact.reader import ArtifactReader
    from bitstack.compressor import compress

    started = time.perf_counter()
    path = compress(args.model, args.output, config_from_args(args), device=args.device, overwrite=args.overwrite,
                    progress=not args.quiet)
    seconds = time.perf_counter() - started
    with ArtifactReader(path, verify=False) as reader:
        m = reader.manifest
        print(f"wrote {path} in {seconds:.1f} s: {len(m.stack)} blocks, floor {m.floor_bytes} bytes, full {m.full_bytes} bytes")
    return 0


def register(sub) -> None:
    p = sub.add_parser("compress", help="compress a model into an artifact",
                       description="Compress a causal LM into a BitStack artifact. The defaults (256 x 2048 calibration "
                                   "tokens, sampled from the model itself) are sized for a GPU; on a CPU they take much longer (32 times the "
                                   "tokens of --nsamples 32 --seqlen 512, what `bitstack demo` uses: about 2.5 minutes for SmolLM2-135M "
                                   "on a 2-core CPU, docs/cpu.md): there, start with those or a text file as --calib. Progress is "
                                   "saved per layer: rerunning the same command resumes.")
    p.add_argument("model", help="smollm2-135m (embedded), a local HF model folder, a .gguf file, or a Hugging Face id")
    p.add_argument("-o", "--output", required=True, help="artifact directory to write")
    p.add_argument("--device", default=None, help="where the math runs (default: cuda if available)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    config_options(p)
    p.set_defaults(func=run)
