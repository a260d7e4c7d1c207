"""Long fuzzing run of the artifact parsers: only BitstackError may escape.

    python -m benchmarks.reliability.fuzz_parsers [--cases 10000] [--reader-cases 2000] [--seed 0] [--json FILE]
        [--result benchmarks/results/reliability/fuzz_parsers.json]

Targets and inputs are those of ``tests/fuzz_cases.py`` (the test suite runs the same properties
with a few hundred cases): ``Manifest.from_json``/``from_dict`` on random JSON, random bytes and
mutated valid manifests; ``parse_header`` on random bytes and mutated valid shard headers;
``ArtifactReader`` (open, base, every block, tokenizer) on mutated copies of a real artifact.
``--cases`` is per parser property, ``--reader-cases`` for the (slower) artifact property.
``target_calls`` counts the calls of each target (a case may call two); ``outcomes`` counts what
each target did: "ok" or the BitstackError subclass it raised.  Prints one line per property and
a JSON summary (also written to ``--json``); exits 1 if anything else escaped.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import struct
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

import torch  # noqa: E402
from fuzz_cases import (JSON, OUTCOMES, encode_raw_header, header_from_bytes, manifest_from_dict,  # noqa: E402
                        manifest_from_json, mutate_artifact, mutate_bytes, mutate_json, only_library_errors,
                        read_everything)
from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def build_artifact(folder: Path) -> Path:
    from tiny_models import tiny_model, tiny_tokenizer

    import bitstack
    from bitstack.config import CompressConfig

    config = CompressConfig(nsamples=4, seqlen=32, niter=4, rank=4, dtype="float32", batch_size=2, shard_mb=0.02)
    path = folder / "tiny.bstk"
    bitstack.compress(tiny_model("llama", num_hidden_layers=2), path, config, tokenizer=tiny_tokenizer(), device="cpu",
                      progress=False)
    return path


from benchmarks.reliability.source_digest import source_digest  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10000)
    parser.add_argument("--reader-cases", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the JSON summary to this file")
    parser.add_argument("--result", default=None, help="also write a result file (benchmarks/resultfile.py)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    package, source = source_digest()

    tmp = Path(tempfile.mkdtemp(prefix="bitstack-fuzz-"))
    artifact = build_artifact(tmp)
    manifest = json.loads((artifact / "manifest.json").read_text())
    shard = (artifact / "blocks-00000.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", shard[:8])
    header = json.loads(shard[8 : 8 + length])
    data_bytes = len(shard) - 8 - length
    target = tmp / "mutated.bstk"

    def make(n: int):
        return settings(max_examples=n, deadline=None, database=None,
                        suppress_health_check=list(HealthCheck))

    properties = {}

    @make(args.cases)
    @given(JSON)
    def manifest_random_json(value):
        only_library_errors(manifest_from_dict, value)
        only_library_errors(manifest_from_json, json.dumps(value))
    properties["manifest: random JSON"] = (manifest_random_json, args.cases)

    @make(args.cases)
    @given(st.binary(max_size=400))
    def manifest_random_bytes(raw):
        only_library_errors(manifest_from_json, raw)
    properties["manifest: random bytes"] = (manifest_random_bytes, args.cases)

    @make(args.cases)
    @given(st.data())
    def manifest_mutations(data):
        mutated = mutate_json(data.draw, manifest)
        only_library_errors(manifest_from_dict, mutated)
        text = json.dumps(mutated).encode()
        only_library_errors(manifest_from_json, mutate_bytes(data.draw, text) if data.draw(st.booleans()) else text)
    properties["manifest: mutated valid manifest"] = (manifest_mutations, args.cases)

    @make(args.cases)
    @given(st.binary(max_size=400), st.integers(0, 10**6))
    def header_random_bytes(raw, size):
        only_library_errors(header_from_bytes, raw, size)
        only_library_errors(header_from_bytes, raw, len(raw))
    properties["header: random bytes"] = (header_random_bytes, args.cases)

    @make(args.cases)
    @given(st.data())
    def header_mutations(data):
        mutated = mutate_json(data.draw, header)
        blob, size = encode_raw_header(mutated, data_bytes, pad=data.draw(st.booleans()))
        only_library_errors(header_from_bytes, blob, size)
        only_library_errors(header_from_bytes, mutate_bytes(data.draw, shard[: len(blob) + 64]), len(shard))
    properties["header: mutated valid shard header"] = (header_mutations, args.cases)

    @make(args.reader_cases)
    @given(st.data())
    def reader_mutations(data):
        mutate_artifact(data.draw, artifact, target)
        only_library_errors(read_everything, target)
    properties["reader: mutated artifact folder"] = (reader_mutations, args.reader_cases)

    failures = 0
    summary = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "python": platform.python_version(),
               "torch": torch.__version__, "bitstack_package": package, "bitstack_source_sha256": source,
               "seed": args.seed, "properties": {}}
    started_all = time.perf_counter()
    for name, (prop, cases) in properties.items():
        before = sum(OUTCOMES.values())
        started = time.perf_counter()
        try:
            seed(args.seed)(prop)()
            status = "only BitstackError escaped"
        except Exception:  # hypothesis re-raises the (shrunk) escaping exception
            failures += 1
            status = "ESCAPE:\n" + traceback.format_exc()
        seconds = time.perf_counter() - started
        calls = sum(OUTCOMES.values()) - before
        print(f"{name}: {cases} cases ({calls} target calls) in {seconds:.1f} s: {status}", flush=True)
        summary["properties"][name] = {"cases": cases, "target_calls": calls, "seconds": round(seconds, 1),
                                       "ok": status.startswith("only")}
    summary["seconds"] = round(time.perf_counter() - started_all, 1)
    summary["outcomes"] = {f"{t} -> {o}": n for (t, o), n in sorted(OUTCOMES.items())}
    by_target: dict[str, dict[str, int]] = {}
    for (target_name, outcome), n in OUTCOMES.items():
        by_target.setdefault(target_name, {})[outcome] = by_target.get(target_name, {}).get(outcome, 0) + n
    summary["calls_per_target"] = {t: sum(v.values()) for t, v in sorted(by_target.items())}
    if source_digest()[1] != source:
        failures += 1
        summary["anomaly"] = f"the source of {package} changed during the run"
    summary["failures"] = failures
    print(json.dumps(summary, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    if args.result:
        from benchmarks.resultfile import write_result

        write_result(args.result, title="Fuzzing the artifact parsers: only `BitstackError` escapes", topic="reliability",
                     columns=["property", "cases", "calls", "seconds", "result"], rows=result_rows(summary), extra=summary,
                     notes=("Hypothesis strategies from `tests/fuzz_cases.py` (the test suite runs the same properties "
                            "with a few hundred cases). Calls counts the calls of the target; some cases call it twice. "
                            "Outcomes per target: " + "; ".join(f"{k}: {v:,}" for k, v in summary["outcomes"].items()) + "."))
    return 1 if failures else 0


LABELS = {"manifest: random JSON": "manifest: random JSON (`from_dict`, `from_json`)",
          "manifest: mutated valid manifest": "manifest: mutated valid manifest (dict, text, bytes)",
          "header: random bytes": "safetensors header: random bytes",
          "header: mutated valid shard header": "safetensors header: mutated valid shard header",
          "reader: mutated artifact folder": "`ArtifactReader` on a mutated artifact folder (open, base, every block, tokenizer)"}


def result_rows(summary: dict) -> list[list]:
    """One row per property: name, cases, target calls, seconds, result."""
    return [[LABELS.get(name, name), f"{p['cases']:,}", f"{p['target_calls']:,}", p["seconds"],
             "only `BitstackError`" if p["ok"] else "FAILED"] for name, p in summary["properties"].items()]


if __name__ == "__main__":
    sys.exit(main())
