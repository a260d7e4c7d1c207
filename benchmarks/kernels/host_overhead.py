"""Host cost of one BitStack linear call, without the kernel: the Python between the runtime and
the Triton launch, which bounds eager decode at one token (the GPU waits on the host).

    python -m benchmarks.kernels.host_overhead --tree main=/work/main/src --tree branch=src --rounds 3

For each tree (a ``src`` folder; each measured in its own interpreter, rounds interleaved), a
codec-``planes`` weight (``--shape``, J = 3, groups of 128) packed on the CPU is called with one
token the way the runtime calls it, with the one-token kernel's launch replaced by a no-op, so that
what is timed is the argument handling, dispatch, launch-parameter and allocation code; beside
it ``nn.Linear`` of the same shape in the same interpreter (a real fp16 CPU product: a floor, not
a like-for-like).  Runs in Triton's interpreter mode (``TRITON_INTERPRET=1``, needed to use the
kernel path on the CPU; nothing is interpreted since the launch is a no-op).  Prints µs per call
(best of ``--repeats`` loops of ``--calls``) and writes a result file with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads(1)
from bitstack.core.packing import pack_signs
from bitstack.kernels import pack_planes
import bitstack.kernels.planes.gemv as gemv

class NoLaunch:
    def __getitem__(self, grid):
        return lambda *args, **kwargs: None

gemv._planes_gemv_kernel = NoLaunch()
N, K, calls, repeats = (int(v) for v in sys.argv[1:5])
g = torch.Generator().manual_seed(0)
G = (K + 127) // 128
packed = pack_planes([pack_signs(torch.rand(N, K, generator=g) > 0.5) for _ in range(3)],
                     (torch.randn(N, G, generator=g) * 0.05).half(), (torch.rand(N, G, generator=g) * 0.05).half(),
                     128, in_features=K)
try:  # the runtime's call where the tree has the custom operators
    from bitstack.kernels.ops import planes_linear_call as call
except ImportError:
    from bitstack.kernels import planes_linear as call
x = torch.randn(1, 1, K, generator=g).half()
dense = torch.nn.Linear(K, N, bias=False).half()
out = {}
with torch.no_grad():
    for name, fn in (("bitstack", lambda: call(x, packed, None)), ("nn.Linear", lambda: dense(x))):
        for _ in range(200):
            fn()
        best = float("inf")
        for _ in range(repeats):
            began = time.perf_counter()
            for _ in range(calls):
                fn()
            best = min(best, (time.perf_counter() - began) / calls * 1e6)
        out[name] = best
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="append", required=True, help="NAME=PATH of a src folder (repeatable)")
    parser.add_argument("--shape", default="64x256", help="OUTxIN of the weight (small: the launch is not run)")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the trees")
    parser.add_argument("--out", help="result file (benchmarks/results/kernels/NAME.json)")
    args = parser.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree)
    commits = {name: subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=path, capture_output=True,
                                    text=True).stdout.strip() or "unknown" for name, path in trees.items()}
    N, K = (int(v) for v in args.shape.split("x"))
    measured: dict = {name: [] for name in trees}
    for r in range(args.rounds):
        for name, path in trees.items():
            env = dict(os.environ, PYTHONPATH=str(Path(path).resolve()), TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
            res = subprocess.run([sys.executable, "-c", CHILD, str(N), str(K), str(args.calls), str(args.repeats)],
                                 env=env, capture_output=True, text=True, check=True, cwd=ROOT)
            row = json.loads(res.stdout.strip().splitlines()[-1])
            measured[name].append(row)
            print(f"round {r + 1} {name}: bitstack {row['bitstack']:.1f} µs/call, nn.Linear {row['nn.Linear']:.1f} µs/call",
                  flush=True)
    rows = [[name, " / ".join(f"{m['bitstack']:.1f}" for m in ms), " / ".join(f"{m['nn.Linear']:.1f}" for m in ms)]
            for name, ms in measured.items()]
    for row in rows:
        print(" | ".join(row))
    if args.out:
        from benchmarks.resultfile import write_result

        load = os.getloadavg()[0]
        write_result(args.out, title="Host cost of a one-token planes linear call, kernel launch excluded (CPU)",
                     topic="kernels", columns=["tree", "BitStack call µs (rounds)", "nn.Linear µs (rounds)"], rows=rows,
                     notes=(f"Weight {N}×{K}, J = 3, groups of 128, one fp16 token; the one-token kernel's launch "
                            "replaced by a no-op, so the times are the Python around it (argument checks, dispatch, "
                            "launch parameters, allocations). Best of "
                            f"{args.repeats} loops of {args.calls} calls per round, rounds interleaved over the "
                            f"trees; load average {load:.1f} on the machine when it finished. Trees (src folder, "
                            f"commit): { {n: (trees[n], commits[n]) for n in trees} }."),
                     extra={"measured": measured, "commits": commits})


if __name__ == "__main__":
    main()
