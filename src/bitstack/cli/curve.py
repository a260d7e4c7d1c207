"""``bitstack curve``: perplexity against memory at many budgets (CSV, JSON, PNG)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bitstack.cli.common import artifact_arguments, print_json, read_text, settings_options
from bitstack.errors import InputError
from bitstack.evaluation.perplexity import PerplexitySettings
from bitstack.remote.urls import is_remote


def run(args: argparse.Namespace) -> int:
    from bitstack.artifact.opening import open_artifact
    from bitstack.evaluation.curve import artifact_axes, check_curve_prefix, measure_curve, read_series_csv, write_curve
    from bitstack.evaluation.perplexity import check_seqlen

    if (args.budgets is None) == (args.points is None):
        raise InputError("give the budgets to evaluate: --budgets 100MB,120MB,... or --points N")
    budgets = [b for b in args.budgets.split(",") if b.strip()] if args.budgets is not None else None
    if budgets is not None and not budgets:
        raise InputError("--budgets is empty: give a comma-separated list such as 100MB,120MB")
    extra = []
    for spec in args.series or []:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise InputError(f"--series {spec!r} must look like NAME=ARTIFACT")
        extra.append((name, path))
    csv_series = {}
    for file in args.series_csv or []:
        csv_series.update(read_series_csv(file))
    text = read_text(args.ppl)
    out = args.out or f"{str(args.artifact).rstrip('/')}-curve"
    if is_remote(args.artifact) and not args.out:  # written here, named after the URL's last part
        out = f"{Path(str(args.artifact).rstrip('/')).name}-curve"
    out = check_curve_prefix(out)  # before any point is measured
    for path in [args.artifact] + [p for _, p in extra]:
        with open_artifact(path, verify=False) as reader:
            check_seqlen(args.seqlen, reader.manifest.model["config"], option="--seqlen")
    options = dict(seqlen=args.seqlen, max_windows=args.max_windows, batch_size=args.batch_size, device=args.device,
                   dtype=args.dtype, progress=not args.quiet)
    label = args.label or Path(args.artifact).name
    series = {label: measure_curve(args.artifact, text, budgets=budgets, points=args.points, label=label, **options)}
    for name, path in extra:
        if name in series:
            raise InputError(f"series name {name!r} is used twice")
        series[name] = measure_curve(path, text, budgets=budgets, points=args.points, label=name, skip_below_floor=True, **options)
    for name, points in csv_series.items():
        if name in series:
            raise InputError(f"series name {name!r} of the CSV is used twice")
        series[name] = points
    base_bytes, params = artifact_axes(args.artifact, args.dtype)
    meta = {"artifact": str(args.artifact), "ppl_file": args.ppl, "seqlen": args.seqlen, "max_windows": args.max_windows,
            "dtype": args.dtype, "series": [name for name, _ in extra], "series_csv": args.series_csv or []}
    paths = write_curve(series, out, base_bytes=base_bytes, params=params, title=args.title, meta=meta)
    if args.json:
        print_json({"files": {k: str(v) for k, v in paths.items()},
                     "series": {k: [p.to_dict() for p in v] for k, v in series.items()}})
    else:
        for name, points in series.items():
            for p in points:
                bits = "" if p.bits_per_param is None else f"  {p.bits_per_param:6.2f} bits/param"
                print(f"{name}: {p.memory_bytes / 1e6:9.2f} MB{bits}  ppl {p.ppl:.3f}")
        print("wrote " + ", ".join(str(v) for v in paths.values()))
    return 0


def register(sub) -> None:
    p = sub.add_parser("curve", help="perplexity against memory at many budgets (CSV, JSON, PNG)",
                       description="Evaluate perplexity at a series of budgets; write OUT.csv, OUT.json and OUT.png.")
    artifact_arguments(p, memory=False)
    p.add_argument("--ppl", metavar="TEXT_FILE", required=True, help="UTF-8 text to score (e.g. WikiText-2 test)")
    p.add_argument("--budgets", default=None, help="comma-separated budgets, e.g. 100MB,120MB,150MB")
    p.add_argument("--points", type=int, default=None, help="N budgets spread evenly from the floor to the full stack")
    p.add_argument("--series", action="append", metavar="NAME=ARTIFACT", help="another artifact drawn on the same axes (repeatable)")
    p.add_argument("--series-csv", action="append", metavar="FILE", help="extra series from a CSV with columns label,memory_bytes,ppl (repeatable)")
    p.add_argument("--label", default=None, help="name of the main series (default: the artifact's folder name)")
    p.add_argument("--title", default=None, help="plot title")
    p.add_argument("--out", default=None, help="output prefix (default: ARTIFACT-curve; for a URL, NAME-curve here)")
    settings_options(p, PerplexitySettings)
    p.add_argument("--device", default=None, help="cpu, cuda … (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=("bfloat16", "float16", "float32"), help="compute dtype (default: the artifact's)")
    p.add_argument("--json", action="store_true", help="print the points as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
