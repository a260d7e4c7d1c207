"""The memory–quality curve of an artifact: perplexity at a series of budgets, as CSV/JSON/PNG.

Function API (used by ``bitstack curve`` and the benchmark scripts):

- :func:`spread_budgets` — N budgets spread evenly from an artifact's floor to its full stack;
- :func:`measure_curve` — perplexity of an artifact at each budget (the full stack is read once;
  each budget assigns every weight the blocks of the longest stack prefix that fits, exactly as
  :func:`bitstack.load` at that budget would);
- :func:`evaluate_order` — the same for any order of the artifact's blocks, without rewriting it;
- :func:`write_curve` — CSV + JSON + PNG of one or more series;
- :func:`plot_curves` — the PNG alone (matplotlib, Agg backend, imported only here);
- :func:`read_series_csv` — series from a CSV with columns ``label,memory_bytes,ppl``.

Memory is resident weight bytes at the compute dtype (see the README); bits/param is
8 × (memory − non-decomposed bytes) / decomposed parameters.
"""

from __future__ import annotations

import bisect
import csv
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from bitstack.artifact.atomic import atomic_write_bytes
from bitstack.artifact.opening import open_artifact
from bitstack.calibration.samples import tokenize_text
from bitstack.config import resolve_dtype
from bitstack.errors import BudgetError, InputError
from bitstack.evaluation.perplexity import PerplexitySettings, check_seqlen, token_windows
from bitstack.memory import format_sizes
from bitstack.runtime.budget import base_bytes_at, budget_bytes
from bitstack.runtime.loader import load_tokenizer
from bitstack.sorting.measure import StackEvaluator
from bitstack.sorting.resort import stack_order

CSV_FIELDS = ("label", "budget_bytes", "memory_bytes", "bits_per_param", "blocks", "ppl", "nll")


@dataclass(frozen=True)
class CurvePoint:
    """One evaluated budget.  ``budget_bytes``, ``bits_per_param``, ``blocks``, ``nll`` may be
    ``None`` for points read from a CSV that lacks them."""

    label: str
    memory_bytes: int
    ppl: float
    budget_bytes: int | None = None
    bits_per_param: float | None = None
    blocks: int | None = None
    nll: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def spread_budgets(floor_bytes: int, full_bytes: int, points: int) -> list[int]:
    """``points`` budgets from ``floor_bytes`` to ``full_bytes`` inclusive, evenly spaced."""
    if points < 1:
        raise InputError(f"--points must be at least 1, got {points}")
    if points == 1:
        return [full_bytes]
    return [floor_bytes + round(k * (full_bytes - floor_bytes) / (points - 1)) for k in range(points)]


def _prefix_for(prefix_bytes: Sequence[int], floor_blocks: int, budget: int) -> int:
    """Longest prefix (>= the floor) that fits ``budget``; BudgetError below the floor."""
    if budget < prefix_bytes[floor_blocks]:
        wanted, floor = format_sizes(budget, prefix_bytes[floor_blocks])
        raise BudgetError(f"budget {wanted} is below the floor {floor}")
    return bisect.bisect_right(prefix_bytes, budget) - 1


def evaluate_order(evaluator, order: Sequence[tuple[int, int]], budgets: Sequence[int], windows: torch.Tensor, *,
                   label: str, progress: bool = True) -> list[CurvePoint]:
    """Perplexity of ``evaluator``'s artifact with its blocks in ``order``, at each budget.

    Args:
        evaluator: a :class:`~bitstack.sorting.measure.StackEvaluator`.
        order: (weight index, block index) pairs, head first (e.g. a strategy's order).
        budgets: resident-byte budgets (at the evaluator's dtype), each >= the floor.
        windows: int64 (n, seqlen) token windows, each scored on its own.
    """
    prefix = [evaluator.prefix_bytes[0]]
    for w, _ in order:
        prefix.append(prefix[-1] + evaluator.block_bytes[w])
    floor_blocks = sum(1 for n in evaluator.num_blocks if n > 0)
    params = evaluator.manifest.decomposed_params()
    points = []
    for budget in tqdm(list(budgets), desc=f"curve {label}", unit="budget", disable=not progress):
        count = _prefix_for(prefix, floor_blocks, int(budget))
        evaluator.set_counts(evaluator.counts_at(order, count))
        nll = evaluator.evaluate(windows)
        memory = prefix[count]
        points.append(CurvePoint(label=label, memory_bytes=memory, ppl=math.exp(nll) if nll < 700 else math.inf,
                                 budget_bytes=int(budget), bits_per_param=round(8 * (memory - prefix[0]) / params, 4),
                                 blocks=count, nll=nll))
    return points


def measure_curve(path: str | Path, text: str, *, budgets: Sequence[int | str] | None = None, points: int | None = None,
                  seqlen: int = PerplexitySettings.seqlen, max_windows: int | None = PerplexitySettings.max_windows,
                  batch_size: int = PerplexitySettings.batch_size, label: str | None = None,
                  device: torch.device | str | None = None, dtype: torch.dtype | str | None = None,
                  skip_below_floor: bool = False, progress: bool = True) -> list[CurvePoint]:
    """Perplexity of the artifact at ``path`` on ``text`` at each budget (or ``points`` spread
    from floor to full).  Windows follow :func:`bitstack.evaluation.perplexity.perplexity`.

    ``skip_below_floor`` drops budgets under this artifact's floor instead of raising (useful
    when several artifacts share one list of budgets).
    """
    if (budgets is None) == (points is None):
        raise InputError("give either budgets or points")
    with open_artifact(path, verify=False) as reader:  # before the stack is read
        check_seqlen(seqlen, reader.manifest.model["config"])
    evaluator = StackEvaluator(path, device=device, dtype=dtype, batch_size=batch_size)
    floor, full = evaluator.prefix_bytes[evaluator.manifest.floor_blocks], evaluator.prefix_bytes[-1]
    if points is not None:
        wanted = spread_budgets(floor, full, points)
    else:
        wanted = [budget_bytes(evaluator.manifest, b, evaluator.dtype) for b in budgets]
        below = [b for b in wanted if b < floor]
        if below and not skip_below_floor:
            wanted, low, high = format_sizes(below[0], floor, full)
            raise BudgetError(f"budget {wanted} is below the floor of {path} ({low}, "
                              f"full stack {high}): choose budgets from the floor up")
        wanted = [b for b in wanted if b >= floor]
    tokenizer = load_tokenizer(path)
    windows = token_windows(tokenize_text(tokenizer, text, special_tokens=True), seqlen, max_windows)
    return evaluate_order(evaluator, stack_order(evaluator.manifest), wanted, windows,
                          label=label or Path(path).name, progress=progress)


def artifact_axes(path: str | Path, dtype: torch.dtype | str | None = None) -> tuple[int, int]:
    """(non-decomposed bytes at the compute dtype, decomposed parameters) of an artifact — what
    the bits/param axis of :func:`plot_curves` needs."""
    with open_artifact(path, verify=False) as reader:
        manifest = reader.manifest
        dtype = resolve_dtype(dtype, manifest.compression.get("dtype", "bfloat16"))
        return base_bytes_at(manifest, dtype), manifest.decomposed_params()


def read_series_csv(path: str | Path) -> dict[str, list[CurvePoint]]:
    """Series from a CSV with at least the columns ``label,memory_bytes,ppl`` (others optional)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"series CSV {path} does not exist")
    series: dict[str, list[CurvePoint]] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"label", "memory_bytes", "ppl"} - set(reader.fieldnames or ())
        if missing:
            raise InputError(f"series CSV {path} lacks column(s) {', '.join(sorted(missing))}: it needs label,memory_bytes,ppl")
        for line, row in enumerate(reader, start=2):
            try:
                point = CurvePoint(
                    label=row["label"], memory_bytes=int(float(row["memory_bytes"])), ppl=float(row["ppl"]),
                    budget_bytes=_opt(row.get("budget_bytes"), int), bits_per_param=_opt(row.get("bits_per_param"), float),
                    blocks=_opt(row.get("blocks"), int), nll=_opt(row.get("nll"), float),
                )
            except (TypeError, ValueError) as err:
                raise InputError(f"series CSV {path}, line {line}: {err}") from err
            series.setdefault(point.label, []).append(point)
    return series


def _opt(value: str | None, kind):
    return None if value in (None, "") else kind(float(value)) if kind is int else kind(value)


def plot_curves(series: dict[str, list[CurvePoint]], png: str | Path, *, base_bytes: int | None = None,
                params: int | None = None, title: str | None = None) -> Path:
    """Memory (MB) against perplexity (log scale), one line per series.

    With ``base_bytes`` and ``params`` (non-decomposed bytes, decomposed parameter count of the
    model), a secondary x axis on top shows bits per parameter.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    png = Path(png)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    try:
        for label, points in series.items():
            pts = sorted((p for p in points if math.isfinite(p.ppl)), key=lambda p: p.memory_bytes)
            if not pts:
                continue
            ax.plot([p.memory_bytes / 1e6 for p in pts], [p.ppl for p in pts], marker="o", markersize=3, label=label)
        ax.set_xlabel("resident weight memory (MB)")
        ax.set_ylabel("perplexity (log scale)")
        ax.set_yscale("log")
        from matplotlib.ticker import FuncFormatter, NullFormatter

        plain = FuncFormatter(lambda y, _: f"{y:g}")
        ax.yaxis.set_major_formatter(plain)
        low, high = ax.get_ylim()
        ax.yaxis.set_minor_formatter(plain if high / low < 10 else NullFormatter())  # label minors only within a decade
        ax.grid(True, which="both", alpha=0.3)
        if base_bytes is not None and params:
            scale = 8e6 / params
            top = ax.secondary_xaxis("top", functions=(lambda mb: (mb - base_bytes / 1e6) * scale,
                                                       lambda bits: bits / scale + base_bytes / 1e6))
            top.set_xlabel("bits per decomposed parameter")
        if title:
            ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        fig.savefig(png)
    finally:
        plt.close(fig)
    return png


def check_curve_prefix(prefix: str | Path) -> Path:
    """``prefix`` as a Path; InputError if its folder does not exist or cannot be written (checked
    by the CLI before any point is measured, and again by :func:`write_curve`)."""
    prefix = Path(prefix)
    if not prefix.parent.is_dir():
        raise InputError(f"output folder {prefix.parent} does not exist: create it or choose another --out")
    if not os.access(prefix.parent, os.W_OK):
        raise InputError(f"output folder {prefix.parent} is not writable: choose another --out")
    return prefix


def write_curve(series: dict[str, list[CurvePoint]], prefix: str | Path, *, base_bytes: int | None = None,
                params: int | None = None, title: str | None = None, meta: dict | None = None) -> dict[str, Path]:
    """Write ``PREFIX.csv``, ``PREFIX.json`` and ``PREFIX.png``; returns their paths.

    The JSON holds ``meta`` (e.g. the command's settings), ``base_bytes``, ``params`` and every
    point; the CSV has the columns of :data:`CSV_FIELDS`.
    """
    prefix = check_curve_prefix(prefix)
    paths = {kind: prefix.with_name(prefix.name + "." + kind) for kind in ("csv", "json", "png")}
    rows = [p for points in series.values() for p in points]
    lines = [",".join(CSV_FIELDS)]
    for p in rows:
        d = p.to_dict()
        lines.append(",".join("" if d[f] is None else _csv_cell(d[f]) for f in CSV_FIELDS))
    atomic_write_bytes(paths["csv"], ("\n".join(lines) + "\n").encode("utf-8"))
    body = {"meta": meta or {}, "base_bytes": base_bytes, "decomposed_params": params,
            "series": {label: [_finite(p.to_dict()) for p in points] for label, points in series.items()}}
    atomic_write_bytes(paths["json"], (json.dumps(body, indent=1, allow_nan=False) + "\n").encode("utf-8"))
    tmp = paths["png"].with_name("." + paths["png"].name + ".tmp.png")
    try:
        plot_curves(series, tmp, base_bytes=base_bytes, params=params, title=title)
        tmp.replace(paths["png"])
    finally:
        tmp.unlink(missing_ok=True)
    return paths


def _csv_cell(value) -> str:
    text = str(value)
    if any(c in text for c in ',"\n'):
        text = '"' + text.replace('"', '""') + '"'
    return text


def _finite(row: dict) -> dict:
    """JSON has no infinity: an overflowing perplexity is written as null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
