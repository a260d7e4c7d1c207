"""Wall time of the README's main job and of a default compression on the CPU, phase by phase.

    python -m benchmarks.cpu.compress_time --runs 2 --out benchmarks/results/cpu/compress_time.json

Runs, ``--runs`` times each, in a fresh temporary folder and a fresh process:

* ``bitstack compress smollm2-135m --nsamples 32 --seqlen 512`` (defaults otherwise: codec planes,
  joint signs, leveled sort, calibration text sampled from the model), target 180 s;
* ``bitstack demo`` (compression included), target 240 s.

Without ``--cold-native`` the native kernels are already built (as after a first use).

``--cold-native`` gives each run an empty native-kernel cache (``BITSTACK_NATIVE_CACHE``), so
the run includes compiling the kernels, as the first run on a fresh machine does.

Each phase line the command prints (``bitstack: [k/n] ...`` and the demo's ``[k/n] ...``) is
stamped when it arrives, so the table splits the wall time into phases.  The load average before
and after each run is recorded: on a shared machine a run competes with other processes.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

from benchmarks.cpu.common import load_average
from benchmarks.resultfile import write_result

JOBS = {
    "compress": (["compress", "smollm2-135m", "-o", "{dir}/out.bstk", "--nsamples", "32", "--seqlen", "512"], 180.0),
    "demo": (["demo", "--output", "{dir}/demo.bstk"], 240.0),
}
PHASE = re.compile(r"^(?:bitstack: )?\[(\d+)/(\d+)\] ([^:(]+)")


def run_job(name: str, cold_native: bool = False) -> dict:
    """One run of ``name`` (a key of JOBS): wall seconds, phase start times, loads.  With
    ``cold_native`` the run gets an empty native-kernel cache (it compiles the kernels)."""
    argv, _ = JOBS[name]
    with tempfile.TemporaryDirectory(prefix="bitstack-time-") as folder:
        command = [sys.executable, "-m", "bitstack.cli", *[a.format(dir=folder) for a in argv]]
        env = {**os.environ, **({"BITSTACK_NATIVE_CACHE": os.path.join(folder, "native")} if cold_native else {})}
        load_before = load_average()
        began = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, bufsize=1,
                                   env=env)
        phases = []
        for line in process.stderr:
            for part in line.split("\r"):
                match = PHASE.match(part.strip())
                if match:
                    phases.append((match.group(3).strip(), round(time.perf_counter() - began, 1)))
        if process.wait() != 0:
            raise SystemExit(f"{name} failed with exit code {process.returncode}")
        wall = time.perf_counter() - began
    return {"wall_s": round(wall, 1), "phases": phases, "load_before": load_before, "load_after": load_average()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--jobs", default="compress,demo", help="comma-separated: compress, demo")
    parser.add_argument("--cold-native", action="store_true", help="an empty native-kernel cache per run: include the build")
    parser.add_argument("--out", help="result file (benchmarks/resultfile.py schema)")
    args = parser.parse_args()
    rows, raw = [], {}
    for run in range(1, args.runs + 1):
        for name in args.jobs.split(","):
            result = run_job(name, args.cold_native)
            raw.setdefault(name, []).append(result)
            target = JOBS[name][1]
            steps = "; ".join(f"{phase} @{at:g} s" for phase, at in result["phases"])
            rows.append([name, run, result["wall_s"], target, round(result["wall_s"] / target, 2), steps,
                         f"{result['load_before']} / {result['load_after']}"])
            print(f"{name} run {run}: {result['wall_s']} s (target {target:g} s) | {steps}", flush=True)
    if args.out:
        title = "Compression and the main job on the CPU, wall time" + (", native kernels built in the run" if args.cold_native else "")
        write_result(args.out, title=title, topic="cpu",
                     columns=["job", "run", "wall (s)", "target (s)", "wall / target", "phases (start, s after launch)",
                              "load average before / after"],
                     rows=rows, extra={"runs": raw},
                     notes="`compress` = `bitstack compress smollm2-135m --nsamples 32 --seqlen 512` (defaults otherwise); "
                           "`demo` = `bitstack demo` (compression with 32 x 512 self-sampled tokens, then evaluation at "
                           "three budgets). Each run in a fresh process and folder, "
                           + ("with an empty native-kernel cache: the run compiles the kernels (as on a fresh machine)."
                              if args.cold_native else "the native kernels already built."))


if __name__ == "__main__":
    main()
