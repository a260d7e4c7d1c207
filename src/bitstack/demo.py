"""The main job: compress the embedded SmolLM2-135M offline and show quality at three budgets.

Quality is perplexity on held-out text sampled from the float model itself (a seed different
from calibration's), so that the demo needs no data files; pass a text file (e.g. WikiText-2)
to score that too.  Budgets are 4, 3 and 2.5 bits per decomposed parameter, next to the full
stack and the float model.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import torch

from bitstack.config import CompressConfig
from bitstack.errors import InputError
from bitstack.memory import format_bytes

DEMO_MODEL = "smollm2-135m"
DEMO_BITS = (4.0, 3.0, 2.5)
EVAL_SEED = 1234
PROMPT = "The capital of France is"


def _greedy(model, tokenizer, device, tokens: int = 12) -> str:
    ids = tokenizer(PROMPT, return_tensors="pt").to(device)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=tokens, do_sample=False, top_p=None, top_k=None, temperature=None,
                             pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True).replace("\n", " ").strip()


class _Phases:
    """One line per evaluation phase on stderr (``[k/n] what ... (elapsed since the demo began)``),
    so that the minutes of evaluation are never silent; nothing when ``enabled`` is False."""

    def __init__(self, total: int, enabled: bool, began: float):
        self.total, self.enabled, self.began, self.done = total, enabled, began, 0

    def step(self, what: str) -> None:
        self.done += 1
        if self.enabled:
            print(f"[{self.done}/{self.total}] {what} ({time.time() - self.began:.0f} s)", file=sys.stderr, flush=True)


def _read_ppl_text(ppl_file: str | None) -> str | None:
    if ppl_file is None:
        return None
    if not Path(ppl_file).is_file():
        raise InputError(f"text file {ppl_file} does not exist")
    try:
        return Path(ppl_file).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{ppl_file} is not UTF-8 text") from err


def run_demo(*, output: str = "smollm2-135m.bstk", ppl_file: str | None = None, nsamples: int = 32, seqlen: int = 512,
             eval_seqlen: int = 512, eval_windows: int = 8, device: str | None = None, progress: bool = True) -> list[dict]:
    """Compress (or reuse) the demo artifact, evaluate it at three budgets, print a table."""
    from bitstack.artifact.reader import ArtifactReader
    from bitstack.calibration.samples import self_samples
    from bitstack.compressor import compress
    from bitstack.evaluation.perplexity import perplexity, window_perplexity
    from bitstack.models.source import load_float_model
    from bitstack.devices import resolve_device
    from bitstack.runtime.loader import load, load_tokenizer
    from bitstack.runtime.report import memory_report

    began = time.time()
    dev = resolve_device(device)
    text = _read_ppl_text(ppl_file)  # fail fast, before the long compression
    torch.set_grad_enabled(False)
    path = Path(output)
    source = load_float_model(DEMO_MODEL)  # once: a bfloat16 copy is evaluated, the float32 model compressed
    float_model = copy.deepcopy(source.model).to(dev, torch.bfloat16).eval()
    if (path / "manifest.json").is_file():
        print(f"reusing artifact {path} (delete it to recompress)")
    else:
        started = time.time()
        config = CompressConfig(calib="self", nsamples=nsamples, seqlen=seqlen)
        compress(source, path, config, device=dev, progress=progress)
        print(f"compressed {DEMO_MODEL} in {time.time() - started:.0f} s -> {path}")
    del source
    with ArtifactReader(path, verify=False) as reader:
        manifest = reader.manifest
    tokenizer = load_tokenizer(path)

    budgets = [("full stack", None)] + [(f"{bits:g} bits/param", manifest.base_bytes + int(bits * manifest.decomposed_params() / 8))
                                        for bits in DEMO_BITS]
    phases = _Phases(2 + len(budgets), progress, began)
    phases.step(f"sampling {eval_windows} held-out sequences of {eval_seqlen} tokens from the float model")
    held_out = self_samples(float_model, tokenizer, eval_windows, eval_seqlen, EVAL_SEED, progress=progress)

    def score(model) -> dict:
        row = {"self_ppl": window_perplexity(model, held_out, progress=progress).ppl}
        if text is not None:
            row["text_ppl"] = perplexity(model, tokenizer, text, seqlen=eval_seqlen, max_windows=eval_windows,
                                         progress=progress).ppl
        row["sample"] = _greedy(model, tokenizer, dev)
        return row

    dense_bytes = sum(p.numel() * p.element_size() for p in float_model.parameters())
    phases.step("evaluating float (bf16): perplexity, greedy sample")
    rows = [{"setting": "float (bf16)", "memory_bytes": dense_bytes, "bits_per_param": 16.0, **score(float_model)}]
    del float_model
    for label, budget in budgets:
        if budget is not None and budget < manifest.floor_bytes:
            phases.step(f"skipping {label}")
            print(f"skipping {label}: {format_bytes(budget)} is below the floor {format_bytes(manifest.floor_bytes)}")
            continue
        phases.step(f"evaluating {label}: load, perplexity, greedy sample")
        model = load(path, budget, device=dev)
        report = memory_report(model)
        rows.append({"setting": label, "memory_bytes": report["memory_bytes"], "bits_per_param": report["bits_per_param"], **score(model)})
        del model

    what = f"self-generated held-out text, {eval_windows}×{eval_seqlen} tokens"
    header = f"| setting | memory | bits/param | ppl ({what}) |" + (" ppl (text file) |" if text else "") + " greedy: \"" + PROMPT + "…\" |"
    print()
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for row in rows:
        cells = [row["setting"], format_bytes(row["memory_bytes"]), f"{row['bits_per_param']:.2f}", f"{row['self_ppl']:.2f}"]
        if text:
            cells.append(f"{row['text_ppl']:.2f}")
        cells.append(row["sample"][:60])
        print("| " + " | ".join(cells) + " |")
    if progress:
        print(f"demo finished in {time.time() - began:.0f} s", file=sys.stderr, flush=True)
    return rows
