"""SIGKILL a real ``bitstack compress`` at random moments, restart it, compare with an uninterrupted run.

    python -m benchmarks.reliability.kill_resume [--kills 20] [--seed 0] [--calib self|file] [--layers 8] [--json FILE]
        [--result benchmarks/results/reliability/kill_resume]

A tiny random Llama is saved as a Hugging Face folder.  One uninterrupted CLI run gives the
reference artifact.  Then the same command is started again and again; each start is killed
(SIGKILL), the kill times cycling through three modes:

* "random time": uniform over 1.2 x the reference run's duration (start-up included);
* "random time in work": as soon as the run holds the work folder's lock (start-up, model
  loading and fingerprinting are done), a random time uniform over the duration of the
  reference run's working phase (from its lock to its end), so that most of these land in
  unfinished work whatever the start-up time;
* "after a save": a random time within 1 s (skewed to early) after the run saved something new
  (samples, a layer, a final-stage file);

until ``--kills`` kills have landed.  Whenever a run completes, its artifact must be
byte-identical to the reference (same files, same bytes), and a new episode starts from scratch.
For every kill the script records what the killed run had saved (nothing, samples, N layers,
the final stage).  The runs use the ``bitstack`` package this interpreter imports (set
``PYTHONPATH`` to test a snapshot); its source files are hashed before and after the benchmark,
and a change in between (someone editing the code under test) counts as an anomaly.  Prints
one line per kill and a JSON summary; exits 1 on any difference, leftover or anomaly.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))


def files(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def holds_lock(pid: int, out: Path) -> bool:
    """Whether process ``pid`` has ``<out>.partial/work/lock`` open, i.e. is past its start-up (Linux /proc)."""
    lock = os.path.realpath(out.with_name(out.name + ".partial") / "work" / "lock")
    try:
        entries = list(os.scandir(f"/proc/{pid}/fd"))
    except OSError:
        return False
    for entry in entries:
        try:
            if os.readlink(entry.path) == lock:
                return True
        except OSError:
            continue
    return False


def stage(out: Path) -> str:
    """What a killed run left behind."""
    partial = out.with_name(out.name + ".partial")
    work = partial / "work"
    if out.exists():
        return "finished"
    if not partial.exists():
        return "nothing written (start-up)"
    if not work.exists():
        return "final stage (work removed)"
    if any(p.name != "work" for p in partial.iterdir()):
        return "final stage (writing shards)"
    try:
        done = len(json.loads((work / "progress.json").read_text())["layers"])
    except (OSError, ValueError, KeyError):
        done = 0
    if done:
        return f"{done} layer(s) saved"
    if (work / "samples.safetensors").exists():
        return "samples saved, no layer"
    return "work folder created, no samples"


def _torch_version() -> str:
    import torch

    return torch.__version__


from benchmarks.reliability.source_digest import source_digest  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calib", choices=("self", "file"), default="file")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--json", type=Path, help="also write the JSON summary to this file")
    parser.add_argument("--result", default=None, metavar="PREFIX",
                        help="also write result files PREFIX.json and PREFIX_stages.json (benchmarks/resultfile.py)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    package, source_before = source_digest()

    from tiny_models import WORDS, tiny_model, tiny_tokenizer

    tmp = Path(tempfile.mkdtemp(prefix="bitstack-kill-"))
    model_dir = tmp / "model"
    tiny_model("llama", num_hidden_layers=args.layers, hidden_size=64, intermediate_size=160).save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    calib = "self"
    if args.calib == "file":
        calib = str(tmp / "calib.txt")
        Path(calib).write_text(" ".join(random.Random(0).choice(WORDS) for _ in range(4000)))

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "bitstack.cli", "compress", str(model_dir), "-o", str(out), "--calib", calib,
                "--nsamples", "8", "--seqlen", "32", "--niter", "8", "--rank", "4", "--dtype", "float32",
                "--batch-size", "4", "--shard-mb", "0.1", "--device", "cpu", "--quiet"]

    reference = tmp / "reference.bstk"
    started = time.monotonic()
    proc = subprocess.Popen(command(reference), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    working_at = None
    while proc.poll() is None:
        if working_at is None and holds_lock(proc.pid, reference):
            working_at = time.monotonic() - started
        time.sleep(0.01)
    total = time.monotonic() - started
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        return 1
    expected = files(reference)
    working_at = working_at if working_at is not None else 0.0
    work_s = total - working_at
    print(f"reference run: {total:.1f} s ({working_at:.1f} s start-up), {len(expected)} files, "
          f"{sum(map(len, expected.values()))} bytes", flush=True)

    out = tmp / "killed.bstk"
    kills, completions, mismatches, restarts, anomalies = [], 0, 0, 0, []
    last_left = stage(out)
    bench_started = time.monotonic()
    while len(kills) < args.kills:
        if out.exists():  # the previous episode completed: compare it and start again from scratch
            completions += 1
            got = files(out)
            same = got == expected
            mismatches += not same
            print(f"episode {completions} completed: artifact {'identical to' if same else 'DIFFERENT from'} the reference",
                  flush=True)
            if not same:
                print("  differing files:", sorted(k for k in set(got) | set(expected) if got.get(k) != expected.get(k)),
                      flush=True)
            shutil.rmtree(out)
            last_left = stage(out)
        restarts += 1
        before = stage(out)
        if before != last_left:  # nothing runs between two attempts: the folder must not change
            anomalies.append(f"before attempt {restarts}: {last_left!r} became {before!r} with no process running")
            print("ANOMALY:", anomalies[-1], flush=True)
        proc = subprocess.Popen(command(out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        launched = time.monotonic()
        if len(kills) % 3 == 0:  # anywhere in the run, start-up included
            mode, deadline = "random time", launched + rng.uniform(0.0, 1.2 * total)
        elif len(kills) % 3 == 1:  # within the working phase, measured from the moment the run took the lock
            mode, deadline = "random time in work", None
        else:  # just after the run saved something new (a moment of the working phase)
            mode, deadline = "after a save", None
        while proc.poll() is None:
            now = time.monotonic()
            if deadline is None and mode == "random time in work" and holds_lock(proc.pid, out):
                deadline = now + rng.uniform(0.0, work_s)
            if deadline is None and mode == "after a save" and stage(out) != before:
                deadline = now + rng.uniform(0.0, 1.0) ** 2  # skewed to early: catches short stages too
            if deadline is not None and now >= deadline:
                break
            time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            what = last_left = stage(out)
            kills.append({"mode": mode, "after_s": round(time.monotonic() - launched, 2), "before": before, "left": what})
            print(f"kill {len(kills):2d} ({mode}, after {kills[-1]['after_s']:5.2f} s): {before} -> {what}", flush=True)
            continue
        if proc.returncode != 0:
            print(f"run failed:\n{proc.stderr.read()}", file=sys.stderr)
            return 1
        last_left = stage(out)
    # finish the last episode without a kill (unless the last kill came after it had finished)
    if not out.exists():
        result = subprocess.run(command(out), capture_output=True, text=True)
        if result.returncode != 0:
            print(result.stderr, file=sys.stderr)
            return 1
        restarts += 1
    completions += 1
    got = files(out)
    if got != expected:
        mismatches += 1
        differing = sorted(k for k in set(got) | set(expected) if got.get(k) != expected.get(k))
        print(f"MISMATCH in the last episode: {differing}", flush=True)
    print(f"episode {completions} completed: artifact {'identical to' if got == expected else 'DIFFERENT from'} the reference")
    leftovers = [p.name for p in tmp.iterdir() if p.name.endswith(".partial")]
    if source_digest()[1] != source_before:
        anomalies.append(f"the source of {package} changed during the benchmark: the runs did not all test the same code")
        print("ANOMALY:", anomalies[-1], flush=True)
    unfinished = [k for k in kills if k["left"] != "finished"]
    summary = {
        "kills": len(kills), "runs_started": restarts + 1,  # the reference run included
        "kills_in_unfinished_run": len(unfinished),  # the others landed after the artifact was renamed into place
        "kills_with_work_saved": sum(k["left"] not in ("finished", "nothing written (start-up)") for k in kills),
        "modes": {m: sum(k["mode"] == m for k in kills) for m in ("random time", "random time in work", "after a save")},
        "episodes_completed": completions,
        "artifacts_identical": completions - mismatches, "mismatches": mismatches, "leftover_partial": leftovers,
        "anomalies": anomalies,
        "stages": {s: sum(k["left"] == s for k in kills) for s in sorted({k["left"] for k in kills})},
        "calib": args.calib, "layers": args.layers, "reference_run_s": round(total, 1),
        "reference_startup_s": round(working_at, 1),
        "benchmark_s": round(time.monotonic() - bench_started, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "python": platform.python_version(),
        "torch": _torch_version(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "bitstack_package": package, "bitstack_source_sha256": source_before, "seed": args.seed,
        "command": [Path(c).name if c == sys.executable else c for c in command(Path("OUT"))],
        "kill_log": kills,
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    if args.result:
        write_results(args.result, summary)
    if not args.keep:
        shutil.rmtree(tmp)
    return 1 if mismatches or leftovers or anomalies else 0


def result_tables(summary: dict) -> tuple[list[list], list[list]]:
    """(rows of the summary table, rows of the where-the-kills-landed table) of a run's summary."""
    modes = ", ".join(f"{v} {k}" for k, v in summary["modes"].items())
    rows = [["SIGKILLs", f"{summary['kills']} ({modes})"],
            ["compression processes started (the reference run included)", summary["runs_started"]],
            ["kills that landed in an unfinished run", summary["kills_in_unfinished_run"]],
            ["kills that left saved work behind", summary["kills_with_work_saved"]],
            ["episodes completed (each restarted until it finished)", summary["episodes_completed"]],
            ["artifacts byte-identical to the reference", f"{summary['artifacts_identical']} / {summary['episodes_completed']}"],
            ["leftover `.partial` folders", len(summary["leftover_partial"])],
            ["anomalies (the folder changed between attempts, or the source changed)", len(summary["anomalies"])],
            ["wall time (s)", summary["benchmark_s"]]]
    stages = summary["stages"]
    layers = sorted((k for k in stages if "layer(s) saved" in k), key=lambda k: int(k.split()[0]))
    order = [k for k in ("nothing written (start-up)", "samples saved, no layer") if k in stages] + layers + [
        k for k in ("final stage (writing shards)", "finished") if k in stages]
    return rows, [[k, stages[k]] for k in order]


def write_results(prefix: str, summary: dict) -> None:
    """PREFIX.json (the summary) and PREFIX_stages.json (where the kills landed)."""
    from benchmarks.resultfile import write_result

    rows, stage_rows = result_tables(summary)
    cli = " ".join(summary["command"])
    write_result(f"{prefix}.json", title="Kill and resume: SIGKILL a real compression, restart it", topic="reliability",
                 columns=["", "value"], rows=rows, extra=summary,
                 notes=(f"Each run is the real CLI, `{cli}`, on a random {summary['layers']}-layer Llama saved as a Hugging "
                        f"Face folder. The reference run took {summary['reference_run_s']} s "
                        f"({summary['reference_startup_s']} s of it start-up). Kill times cycle through three modes: a "
                        "random time over 1.2× the reference run; a random time after the run took the work folder's lock, "
                        "over the length of the reference's working phase; a random time within 1 s after the run saved "
                        "something new. The package's source is hashed before and after the run."))
    write_result(f"{prefix}_stages.json", title="Kill and resume: where the kills landed", topic="reliability",
                 columns=["what the killed run had left", "kills"], rows=stage_rows, extra={"kill_log": summary["kill_log"]},
                 notes="The same run; `finished`: the artifact was already renamed into place, the process was exiting.")


if __name__ == "__main__":
    sys.exit(main())
