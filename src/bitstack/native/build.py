"""Compile the native CPU kernels at first use, against the installed torch, into a per-user cache.

No build step at install time (``pip install -e .`` stays pure Python, and no build isolation can
fetch another torch): the first call that wants a native op compiles ``csrc/planes_ops.cpp`` with
the system C++ compiler (``$CXX``, else ``c++``/``g++``/``clang++``) into a shared library that
registers PyTorch custom ops (``torch.ops.bitstack.*``), then loads it with
``torch.ops.load_library``.  Later processes find it in the cache and only load it.

Cache: ``$BITSTACK_NATIVE_CACHE``, else ``$XDG_CACHE_HOME/bitstack/native``, else
``~/.cache/bitstack/native``.  A library's file name carries a hash of everything that makes it
valid: the sources, the torch version, the compiler and its version, the flags and, for
``isa="native"`` (``-march=native``), this CPU's model and feature flags.  Concurrent first uses
each compile into their own temporary directory inside the cache and then rename the library into
place (atomic), so a reader never sees a half-written file.

``isa``: ``"native"`` (default: whatever this CPU has; the code picks AVX-512, AVX2 or scalar at
compile time from the enabled features), ``"avx2"`` or ``"scalar"`` (for tests of the other
back-ends on a machine that has more).  One process loads one library: the ops have one name.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from bitstack.errors import BitstackError

CACHE_ENV = "BITSTACK_NATIVE_CACHE"
CSRC = Path(__file__).resolve().parent / "csrc"
ISA_FLAGS = {
    "native": ["-march=native"],
    "avx2": ["-mavx2", "-mfma", "-mf16c"],
    "scalar": [],
}
_BASE_FLAGS = ["-O3", "-std=c++20", "-shared", "-fPIC", "-fopenmp", "-ffp-contract=off", "-DNDEBUG", "-w"]
BUILD_TIMEOUT_S = 600


class NativeBuildError(BitstackError):
    """The native kernels could not be compiled or loaded (no compiler, a compile error, ...)."""


def default_cache_dir() -> Path:
    """``$BITSTACK_NATIVE_CACHE``, else ``$XDG_CACHE_HOME/bitstack/native``, else ``~/.cache/bitstack/native``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bitstack" / "native"


def sources() -> list[Path]:
    """Every file the library is compiled from (``csrc/*.cpp`` and ``csrc/*.h``), sorted by name."""
    return sorted(p for p in CSRC.iterdir() if p.suffix in (".cpp", ".h"))


def find_compiler() -> str:
    """``$CXX`` if set, else the first of c++, g++, clang++ on PATH; NativeBuildError if none."""
    if os.environ.get("CXX"):
        return os.environ["CXX"]
    for name in ("c++", "g++", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    raise NativeBuildError("no C++ compiler found (install g++ or set CXX)")


def _cpu_signature() -> str:
    """This CPU's model and feature flags (what -march=native depends on)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        keep = [line for line in lines if line.startswith(("model name", "flags", "Features", "CPU part"))]
        return "\n".join(sorted(set(keep)))
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


def _compiler_version(compiler: str) -> str:
    try:
        out = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise NativeBuildError(f"the C++ compiler {compiler!r} does not run: {exc}") from exc
    if out.returncode != 0:
        raise NativeBuildError(f"the C++ compiler {compiler!r} does not run: {out.stderr.strip()[:200]}")
    return out.stdout.strip()


def compile_command(compiler: str, isa: str, source: Path, output: Path) -> list[str]:
    """The compiler command line that builds ``output`` from ``source`` against this torch."""
    if isa not in ISA_FLAGS:
        raise NativeBuildError(f"unknown isa {isa!r}; use one of {', '.join(ISA_FLAGS)}")
    torch_dir = Path(torch.__file__).resolve().parent
    abi = int(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True))
    return [compiler, *_BASE_FLAGS, *ISA_FLAGS[isa], f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
            "-I", str(torch_dir / "include"), str(source), "-o", str(output),
            "-L", str(torch_dir / "lib"), "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{torch_dir / 'lib'}"]


def library_key(compiler: str, isa: str) -> str:
    """Hash of the sources, torch, compiler (path and version), flags and (isa native) the CPU."""
    digest = hashlib.sha256()
    for path in sources():
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    parts = [torch.__version__, str(getattr(torch.version, "git_version", "")), compiler,
             _compiler_version(compiler), " ".join(_BASE_FLAGS + ISA_FLAGS.get(isa, [])), isa,
             _cpu_signature() if isa == "native" else platform.machine()]
    digest.update("\0".join(parts).encode())
    return digest.hexdigest()[:24]


def build_library(cache_dir: str | Path | None = None, isa: str = "native") -> tuple[Path, bool]:
    """The cached library for this configuration, compiled first if missing.

    Returns (path, built): built is False when the cache already had it.  Raises
    NativeBuildError (no compiler, compile error) without leaving anything half-written.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    compiler = find_compiler()
    target = cache / f"bitstack_native_{isa}_{library_key(compiler, isa)}.so"
    if target.is_file():
        return target, False
    try:
        cache.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
    except OSError as exc:
        raise NativeBuildError(f"cannot write the kernel cache {cache}: {exc} (set {CACHE_ENV})") from exc
    try:
        output = work / target.name
        command = compile_command(compiler, isa, CSRC / "planes_ops.cpp", output)
        try:
            run = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, cwd=work)
        except (OSError, subprocess.SubprocessError) as exc:
            raise NativeBuildError(f"the C++ compiler failed to run: {exc}") from exc
        if run.returncode != 0 or not output.is_file():
            tail = " | ".join((run.stderr or run.stdout).strip().splitlines()[-3:])
            raise NativeBuildError(f"compiling the native kernels failed: {tail[:400]}")
        os.replace(output, target)  # atomic: concurrent builders each rename a whole file
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target, True


@functools.lru_cache(maxsize=None)
def load_library(cache_dir: str | None = None, isa: str = "native") -> str:
    """Build if needed and load the library into this process (once); returns the vector
    back-end compiled in ("avx512", "avx2" or "scalar").  NativeBuildError if it cannot."""
    path, _ = build_library(cache_dir, isa)
    try:
        torch.ops.load_library(str(path))
    except (OSError, RuntimeError) as exc:
        raise NativeBuildError(f"loading {path.name} failed: {exc}") from exc
    return torch.ops.bitstack.native_isa()
