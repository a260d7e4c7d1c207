"""The SmolLM2 quality table: BitStack artifacts at each baseline's memory, next to the baselines.

Step 1 (one command per row): the baselines with ``benchmarks/quality/baselines/``, and each
BitStack artifact evaluated at the baselines' memories with ``python -m
benchmarks.quality.evaluate`` (``benchmarks/quality/rows.sh`` runs every row that way), or with
the CLI (``--print-commands`` prints those commands, the memories taken from the baselines' JSONL):

    bitstack eval ART --memory BYTES --ppl wikitext2_test.txt --tasks ... --json > EVALS/LABEL@w4g64.json

Step 2: ``python -m benchmarks.quality.table --baselines B1.jsonl [B2.jsonl ...] --evals EVALS
[--labels LABEL=NAME ...] [--result benchmarks/results/quality/NAME.json] [--plot curve.png]``
prints the markdown table, writes ``EVALS/bitstack_rows.csv`` in ``bitstack curve``'s extra-series
format, with ``--result`` the result file that docs/results.md is generated from, and with
``--plot`` draws every method as one line of memory against perplexity.

Rows are grouped by memory target (a baseline's bit width and group size; the eval files' tag
``w4g64`` or ``hqq4g32`` names the target), largest memory first; each row's perplexity is also
given as a ratio to the float model's.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path
from typing import Callable

TASKS = ("arc_easy", "arc_challenge", "piqa", "winogrande", "lambada_openai")
COLUMNS = ("memory target", "method", "memory (MB)", "bits/param", "WikiText-2 ppl", "ppl / float", "ARC-e", "ARC-c",
           "PIQA", "WinoG", "LAMBADA", "zero-shot avg", "machine")
PROTOCOL = ("SmolLM2-135M-Instruct (the embedded GGUF, dequantized, bf16). WikiText-2 test: {windows}; zero-shot: "
            "{zeroshot} of ARC-Easy, ARC-Challenge, PIQA, WinoGrande and LAMBADA, `acc` in %, the average is their "
            "mean. Memory by bitstack's rule (docs/memory.md): resident bytes, scales and zeros included. Each "
            "BitStack row loads the longest prefix of one artifact that fits the baseline's memory, so its memory is "
            "at most the baseline's.")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def target_of(method: str, bits: int, group: int) -> str:
    """The memory target a baseline row defines (HQQ stores more per group, so its targets are its own)."""
    return f"{'HQQ ' if method == 'hqq' else ''}{bits}-bit g{group}"


def target_of_tag(tag: str) -> str:
    """``w4g64`` -> ``4-bit g64``, ``hqq4g32`` -> ``HQQ 4-bit g32``."""
    match = re.fullmatch(r"(hqq)?w?(\d+)g(\d+)", tag)
    if match is None:
        raise ValueError(f"eval tag {tag!r} is not of the form w4g64 or hqq4g32")
    return target_of("hqq" if match.group(1) else "", int(match.group(2)), int(match.group(3)))


def _ppl(value: float) -> str:
    return f"{value:,.0f}" if value >= 1000 else f"{value:.2f}"


def _ratio(value: float) -> str:
    return f"{value:,.0f}×" if value >= 100 else f"{value:.2f}×"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def table_rows(baselines: list[dict], evals: dict[tuple[str, str], dict], names: dict[str, str] | None = None,
               machine_of: Callable[[str, str, dict], str] | None = None) -> tuple[list[list], list[dict]]:
    """(rows of :data:`COLUMNS`, the same rows as raw records) for one table.

    ``baselines``: the baselines' JSONL records; ``evals``: ``{(label, tag): eval JSON}``;
    ``names``: the BitStack labels to show, renamed (default: every label, as is);
    ``machine_of(label, tag, record)``: a row's machine (default: the record's ``machine`` field).
    """
    names = names or {label: label for label, _ in sorted(evals)}
    machine_of = machine_of or (lambda label, tag, record: str(record.get("machine", "–")))
    floats = [r for r in baselines if r["method"] == "float"]
    float_ppl = floats[0]["ppl"] if floats else None
    records: list[dict] = []
    for r in baselines:
        target = "–" if r["method"] == "float" else target_of(r["method"], r["bits"], r["group"])
        records.append({"target": target, "method": r["label"] if r["method"] == "float" else
                        f"{r['label'].split(' ')[0]} w{r['bits']} g{r['group']}", "kind": "baseline",
                        "label": r["method"], "memory_bytes": r["memory_bytes"], "bits_per_param": r.get("bits_per_param"),
                        "ppl": r["ppl"], "windows": r.get("ppl_windows"), "zs": {t: r.get(f"{t}_acc") for t in TASKS},
                        "zs_avg": r.get("zs_avg"), "machine": machine_of(r["method"], target, r)})
    order = list(names)
    for (label, tag), data in evals.items():
        if label not in names:
            continue
        tasks = data.get("tasks", {}).get("tasks", {})
        records.append({"target": target_of_tag(tag), "method": names[label], "kind": "bitstack", "label": label,
                        "memory_bytes": data["memory_bytes"], "bits_per_param": data.get("bits_per_param"),
                        "ppl": data["ppl"], "windows": data.get("ppl_detail", {}).get("windows"),
                        "zs": {t: tasks.get(t, {}).get("acc") for t in TASKS},
                        "zs_avg": data.get("tasks", {}).get("average"), "machine": machine_of(label, tag, data)})
    target_memory = {r["target"]: r["memory_bytes"] for r in records if r["kind"] == "baseline"}
    target_memory["–"] = float("inf")
    method_rank = {"float": 0, "rtn": 1, "gptq": 2, "awq": 3, "hqq": 4}
    records.sort(key=lambda r: (-target_memory.get(r["target"], r["memory_bytes"]), r["kind"] != "baseline",
                                order.index(r["label"]) if r["kind"] == "bitstack" else method_rank.get(r["label"], 9)))
    rows = []
    for r in records:
        ratio = "–" if float_ppl is None else _ratio(r["ppl"] / float_ppl)
        rows.append([r["target"], r["method"], f"{r['memory_bytes'] / 1e6:.2f}",
                     "–" if r["bits_per_param"] is None else f"{r['bits_per_param']:.2f}", _ppl(r["ppl"]), ratio,
                     *(_pct(r["zs"][t]) for t in TASKS), _pct(r["zs_avg"]), r["machine"]])
    return rows, records


def load_evals(folder: Path) -> dict[tuple[str, str], dict]:
    """``{(label, tag): eval JSON}`` of a folder of ``LABEL@TAG.json`` files."""
    evals = {}
    for path in sorted(folder.glob("*@*.json")):
        label, _, tag = path.stem.partition("@")
        evals[(label, tag)] = json.loads(path.read_text())
    return evals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baselines", required=True, nargs="+", help="the baselines' JSONL files")
    parser.add_argument("--evals", required=True, help="folder of `bitstack eval --json` outputs named LABEL@TAG.json")
    parser.add_argument("--labels", nargs="*", metavar="LABEL[=NAME]", default=None,
                        help="BitStack labels to show, in this order, optionally renamed (default: every label)")
    parser.add_argument("--result", default=None, help="write the table as a result file (benchmarks/resultfile.py)")
    parser.add_argument("--title", default="SmolLM2-135M: BitStack against GPTQ, AWQ, HQQ and RTN at the same memory")
    parser.add_argument("--plot", default=None, help="PNG: all methods on one memory-perplexity plot")
    parser.add_argument("--print-commands", nargs="*", metavar="LABEL=ARTIFACT",
                        help="print the eval commands for these artifacts at each baseline memory instead")
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--max-windows", type=int, default=None, help="with --print-commands (default: all windows)")
    parser.add_argument("--limit", type=int, default=None, help="with --print-commands: zero-shot examples per task")
    args = parser.parse_args(argv)
    baselines = [r for path in args.baselines for r in read_jsonl(Path(path))]
    evals_dir = Path(args.evals)
    if args.print_commands is not None:
        data = Path(args.data)
        tasks = ",".join(f"{t}={data / 'zeroshot' / (t + '.jsonl')}" for t in TASKS)
        for spec in args.print_commands:
            label, _, artifact = spec.partition("=")
            for r in baselines:
                if r["method"] == "float":
                    continue
                tag = f"{'hqq' if r['method'] == 'hqq' else 'w'}{r['bits']}g{r['group']}"
                extra = (f" --max-windows {args.max_windows}" if args.max_windows else "") + (
                    f" --limit {args.limit}" if args.limit else "")
                print(f"bitstack eval {artifact} --memory {r['memory_bytes']} --ppl {data / 'wikitext2_test.txt'}"
                      f" --tasks {tasks}{extra} --quiet --json > {evals_dir / f'{label}@{tag}.json'}")
        return 0

    evals = load_evals(evals_dir)
    names = None if args.labels is None else {s.partition("=")[0]: s.partition("=")[2] or s.partition("=")[0]
                                               for s in args.labels}
    rows, records = table_rows(baselines, evals, names)
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    with (evals_dir / "bitstack_rows.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "memory_bytes", "ppl"])
        for r in records:
            if r["kind"] == "bitstack":
                writer.writerow([r["label"], r["memory_bytes"], r["ppl"]])
    if args.result:
        from benchmarks.resultfile import write_result

        windows = sorted({r["windows"] for r in records if r["windows"]})
        notes = PROTOCOL.format(windows=f"{'/'.join(map(str, windows))} windows of 2048 tokens",
                                zeroshot="the examples scored")
        write_result(args.result, title=args.title, topic="quality", columns=COLUMNS, rows=rows, notes=notes,
                     extra={"rows": records})
    if args.plot:
        from bitstack.evaluation.curve import CurvePoint, plot_curves

        series: dict[str, list] = {}
        for r in records:
            if r["label"] != "float":
                name = r["method"] if r["kind"] == "bitstack" else f"{r['method'].split(' ')[0]} {r['method'].split(' ')[-1]}"
                series.setdefault(name, []).append(CurvePoint(name, r["memory_bytes"], r["ppl"]))
        floats = [r for r in baselines if r["method"] == "float"]
        plot_curves(series, args.plot, base_bytes=baselines[-1].get("base_bytes"),
                    params=baselines[-1].get("quantized_params"),
                    title="SmolLM2-135M, WikiText-2" + (f" (float: {floats[0]['ppl']:.2f})" if floats else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
