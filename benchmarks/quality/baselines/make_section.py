"""Render the baselines table of benchmarks/RESULTS.md (issue 7) from the measured rows.

    python benchmarks/baselines/make_section.py [benchmarks/results/baselines_smollm2.jsonl]

Prints a Markdown table (one line per row of the JSONL, in method/bits/group order) to stdout.
Runs in any environment with the standard library.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TASKS = ("arc_easy", "arc_challenge", "piqa", "winogrande", "lambada_openai")
ORDER = {"float": 0, "rtn": 1, "hqq": 2, "gptq": 3, "awq": 4}


def main() -> int:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "results" / "baselines_smollm2.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows.sort(key=lambda r: (-(r["bits"]), -(r["group"] or 10**6), ORDER[r["method"]]))
    head = ("| method | bits | group | calib samples | memory MB | bits/param | WikiText-2 ppl (windows) | "
            + " | ".join(t.replace("_openai", "") for t in TASKS) + " | zero-shot avg | time (quantize / ppl / zero-shot) | command |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in rows:
        calib = f"{r['nsamples']}×{r['seqlen']}" if r["nsamples"] else "–"
        group = r["group"] or "–"
        accs = " | ".join(f"{100 * r[f'{t}_acc']:.1f}" for t in TASKS)
        times = f"{r['quantize_s']:.0f} / {r['ppl_s']:.0f} / {r['zs_s']:.0f} s"
        print(f"| {r['label'].split(' ')[0] if r['method'] != 'float' else 'float (bf16)'} | {r['bits']} | {group} | {calib} | "
              f"{r['memory_mb']:.2f} | {r['bits_per_param']:.3f} | {r['ppl']:.2f} ({r['ppl_windows']}) | {accs} | "
              f"{100 * r['zs_avg']:.1f} | {times} | `{r['command']}` |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
