"""Issue 7's table: BitStack artifacts at each baseline's memory, next to the baselines.

Step 1 (one command per row): evaluate an artifact at a baseline's memory with the CLI,

    bitstack eval ART --memory BYTES --ppl wikitext2_test.txt --max-windows 4 \\
        --tasks arc_easy=...,arc_challenge=...,piqa=...,winogrande=...,lambada_openai=... --limit 100 \\
        --device cpu --json > OUT/NAME@BITS.json

(``--print-commands`` prints them, with the memories taken from the baselines' JSONL).

(or ``benchmarks/quality_eval.py``, which evaluates one artifact at several memories and writes
the same files; ``benchmarks/quality/rows.sh`` runs every row that way).

Step 2: ``python benchmarks/quality_table.py --baselines B1.jsonl [B2.jsonl ...] --evals OUT
[--plot curve.png]`` prints the markdown table (every row at the same WikiText-2 windows and
zero-shot limit), writes ``OUT/bitstack_rows.csv`` in ``bitstack curve``'s extra-series format,
and with ``--plot`` draws every method (each baseline method and group size, each BitStack label)
as one line of memory against perplexity with ``bitstack curve``'s plotting.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

TASKS = ("arc_easy", "arc_challenge", "piqa", "winogrande", "lambada_openai")


def _baselines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baselines", required=True, nargs="+", help="the baselines' JSONL files (benchmarks/baselines)")
    parser.add_argument("--plot", default=None, help="PNG: all methods on one memory-perplexity plot")
    parser.add_argument("--evals", required=True, help="folder of `bitstack eval --json` outputs named LABEL@BITS.json")
    parser.add_argument("--plot-labels", nargs="*", metavar="LABEL[=NAME]", default=None,
                        help="BitStack labels to draw, optionally renamed (default: every label in --evals)")
    parser.add_argument("--print-commands", nargs="*", metavar="LABEL=ARTIFACT",
                        help="print the eval commands for these artifacts at each baseline memory instead")
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--max-windows", type=int, default=4)
    parser.add_argument("--limit", type=int, default=100)
    args = parser.parse_args(argv)
    rows = [r for path in args.baselines for r in _baselines(Path(path))]
    memories = sorted({(r["method"], r["bits"], r["group"], r["memory_bytes"]) for r in rows if r["method"] != "float"},
                      key=lambda x: (x[1], x[2]))
    evals = Path(args.evals)
    if args.print_commands is not None:
        data = Path(args.data)
        tasks = ",".join(f"{t}={data / 'zeroshot' / (t + '.jsonl')}" for t in TASKS)
        targets = {}
        for _, bits, group, memory in memories:  # one budget per (bits, group): the largest baseline memory there
            targets[(bits, group)] = max(memory, targets.get((bits, group), 0))
        for spec in args.print_commands:
            label, _, artifact = spec.partition("=")
            for (bits, group), memory in sorted(targets.items()):
                print(f"bitstack eval {artifact} --memory {memory} --ppl {data / 'wikitext2_test.txt'} "
                      f"--max-windows {args.max_windows} --tasks {tasks} --limit {args.limit} --device cpu --quiet "
                      f"--json > {evals / f'{label}@w{bits}g{group}.json'}")
        return 0

    table = []
    for r in rows:
        table.append({"method": r["method"] + ("" if r["method"] == "float" else f" w{r['bits']} g{r['group']}"),
                      "memory_bytes": r["memory_bytes"], "bits_per_param": r.get("bits_per_param"), "ppl": r["ppl"],
                      "windows": r.get("ppl_windows"), "zs": {t: r.get(f"{t}_acc") for t in TASKS}, "zs_avg": r.get("zs_avg")})
    for path in sorted(evals.glob("*@*.json")):
        label, _, target = path.stem.partition("@")
        data = json.loads(path.read_text())
        tasks = data.get("tasks", {})
        table.append({"method": f"{label} @ {target}", "memory_bytes": data["memory_bytes"],
                      "bits_per_param": data.get("bits_per_param"), "ppl": data.get("ppl"),
                      "windows": data.get("ppl_detail", {}).get("windows"),
                      "zs": {t: tasks.get("tasks", {}).get(t, {}).get("acc") for t in TASKS}, "zs_avg": tasks.get("average")})
    table.sort(key=lambda r: r["memory_bytes"])
    print("| method | memory (MB) | bits/param | WikiText-2 ppl | windows | " + " | ".join(TASKS) + " | zero-shot avg |")
    print("|---|---|---|---|---|" + "---|" * len(TASKS) + "---|")

    def cell(value, fmt="{:.3f}"):
        return "–" if value is None else fmt.format(value)

    for r in table:
        print(f"| {r['method']} | {r['memory_bytes'] / 1e6:.2f} | {cell(r['bits_per_param'], '{:.2f}')} | "
              f"{cell(r['ppl'], '{:.2f}')} | {cell(r['windows'], '{}')} | "
              + " | ".join(cell(r["zs"][t]) for t in TASKS) + f" | {cell(r['zs_avg'])} |")
    if args.plot:
        from bitstack.evaluation.curve import CurvePoint, plot_curves

        series: dict[str, list] = {}
        for r in rows:
            if r["method"] != "float":
                name = f"{r['label'].split(' ')[0]} g{r['group']}"
                series.setdefault(name, []).append(CurvePoint(name, r["memory_bytes"], r["ppl"]))
        chosen = None if args.plot_labels is None else dict(
            (spec.partition("=")[0], spec.partition("=")[2] or spec.partition("=")[0]) for spec in args.plot_labels)
        for r in table:
            if "@" in r["method"]:
                label = r["method"].split(" @ ")[0]
                if chosen is not None and label not in chosen:
                    continue
                name = label if chosen is None else chosen[label]
                series.setdefault(name, []).append(CurvePoint(name, r["memory_bytes"], r["ppl"]))
        floats = [r for r in rows if r["method"] == "float"]
        plot_curves(series, args.plot, base_bytes=rows[-1].get("base_bytes"), params=rows[-1].get("quantized_params"),
                    title="SmolLM2-135M, WikiText-2" + (f" (float: {floats[0]['ppl']:.2f})" if floats else ""))
    with (evals / "bitstack_rows.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "memory_bytes", "ppl"])
        for r in table:
            if "@" in r["method"]:
                writer.writerow([r["method"].split(" @ ")[0], r["memory_bytes"], r["ppl"]])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
