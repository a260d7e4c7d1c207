"""The jobs of the quality table, one process each (``python -m benchmarks.quality.jobs NAME --json ...``).

Job names (``seeded_table`` builds them):

- ``float``: the float model (bf16) on the test text and zero-shot tasks;
- ``tune-NAME``: compress with candidate NAME's settings at seed 0, score validation perplexity
  at the memories (its artifact is the seed-0 artifact if NAME wins);
- ``bitstack-sS``: compress with the chosen settings at seed S (artifact only);
- ``bitstack-sS@TAG``: evaluate that artifact at memory TAG on the test text and tasks;
- ``gptq-TAG-sS``, ``rtn-TAG``: quantize with GPTQ (seed S's calibration) or RTN at TAG's bits
  and group, then evaluate.

Each writes ``WORK/NAME.json``.  The settings travel as ``--settings`` (a job's own JSON spec).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.quality.common import (BASELINES, MODEL, compress_smollm, evaluate_artifact, evaluate_model,
                                       parse_settings, split_data, write_json)


def artifact_path(work: Path, job: str) -> Path:
    """Where ``bitstack-sS`` / ``tune-NAME`` keep their artifact."""
    return work / f"{job.split('@')[0]}.bstk"


def run(job: str, spec: dict) -> dict:
    """Run one job (module docstring).  ``spec``: data, work, device, model, nsamples, seqlen, memories
    (list of tags), memory_bytes (tag -> budget), settings (overrides text), eval options (max_windows, zs_limit, zeroshot on/off,
    batch_size, seqlen of the windows), val options (val_windows, val_seqlen)."""
    work, data = Path(spec["work"]), Path(spec["data"])
    calib, val = split_data(data, work)
    started = time.perf_counter()
    test_options = {"max_windows": spec["max_windows"], "seqlen": spec["eval_seqlen"], "zs_limit": spec["zs_limit"],
                    "zeroshot": str(data / "zeroshot") if spec["zeroshot"] else None, "batch_size": spec["batch_size"]}
    model_name = spec.get("model", MODEL)
    memories = {t: spec["memory_bytes"][t] for t in spec["memories"]}
    if job.startswith(("tune-", "bitstack-")) and "@" not in job:
        seed = 0 if job.startswith("tune-") else int(job.split("-s")[-1])
        artifact = artifact_path(work, job)
        seconds = compress_smollm(artifact, calib, parse_settings(spec["settings"]), nsamples=spec["nsamples"],
                                  seqlen=spec["seqlen"], seed=seed, device=spec["device"], model=model_name)
        result = {"job": job, "settings": spec["settings"], "seed": seed, "compress_seconds": round(seconds, 1)}
        if job.startswith("tune-"):
            result["val"] = evaluate_artifact(artifact, memories, val.read_text(encoding="utf-8"), device=spec["device"],
                                              max_windows=spec["val_windows"], seqlen=spec["val_seqlen"], zeroshot=None,
                                              zs_limit=None, batch_size=spec["batch_size"])
        return result
    text = (data / "wikitext2_test.txt").read_text(encoding="utf-8")
    if "@" in job:  # bitstack-sS@TAG
        tag = job.split("@")[1]
        evals = evaluate_artifact(artifact_path(work, job), {tag: memories[tag]}, text, device=spec["device"], **test_options)
        return {"job": job, "settings": spec["settings"], "seed": int(job.split("@")[0].split("-s")[-1]), "tag": tag,
                **evals[tag]}
    from benchmarks.quality.gptq import quantize_model, quantized_bytes
    from bitstack.calibration.samples import text_file_samples
    from bitstack.models.source import load_float_model

    loaded = load_float_model(model_name)
    model = loaded.model.float().eval().to(spec["device"])
    result: dict = {"job": job}
    if job != "float":
        method, tag, *rest = job.split("-")
        bits, group = BASELINES[tag]
        seed = int(rest[0][1:]) if rest else None
        samples = None
        if method == "gptq":
            samples = text_file_samples(str(calib), loaded.tokenizer, spec["nsamples"], spec["seqlen"], seed)
        quantize_model(model, method, bits, group, samples)
        result.update(seed=seed, tag=tag, quantize_seconds=round(time.perf_counter() - started, 1),
                      memory_bytes=quantized_bytes(model, bits, group))
    else:  # every parameter in bfloat16, tied ones once
        result["memory_bytes"] = sum(p.numel() * 2 for p in model.parameters())
    result.update(evaluate_model(model.to(torch.bfloat16), loaded.tokenizer, text, **test_options))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("job")
    parser.add_argument("--json", required=True, help="the job's spec (see run())")
    args = parser.parse_args(argv)
    spec = json.loads(args.json)
    write_json(Path(spec["work"]) / f"{args.job}.json", run(args.job, spec))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
