"""Time to first token from a remote artifact over a rate-limited link: progressive vs whole-first.

    python -m benchmarks.remote.ttft --artifact /tmp/remote-smol.bstk --memory 120MB --rate 50MB

The artifact's folder is served on 127.0.0.1 by :class:`bitstack.remote.testing.ArtifactServer`
in a child process (so that the server does not compete for this process's GIL), whose rate
limit is shared by all connections (the link).  Each repeat runs every mode once, in
turn, each from an empty cache, in this process (transformers is imported and one model built
before the first measurement, so no mode pays for that):

* ``whole stack first``: download the whole artifact (every block), then load at the budget;
* ``budget first``: ``bitstack.load(URL, memory)``: only the budget's prefix is fetched;
* ``progressive``: ``bitstack.load(URL, memory, progressive=True)``: the model comes back at the
  floor and grows while it generates.

Time to first token = from the start until the first new token of a greedy ``generate`` exists
(tokenizer, load, prefill; the tokenizer is fetched first, so that it does not share the link
with the blocks of a progressive load).  Also reported: bytes received by then, and for progressive the time
until the whole budget is attached.  Ratios are against ``whole stack first`` of the same run.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

import bitstack
from bitstack.memory import format_bytes, parse_memory
from bitstack.remote.reader import RemoteReader
from bitstack.remote.testing import ArtifactServer
from bitstack.remote.urls import RemoteOptions

MODES = ("whole stack first", "budget first", "progressive")


def first_token(model, tokenizer, prompt: str) -> None:
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        model.generate(**ids, max_new_tokens=1, do_sample=False,
                       pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)


def serve(root: str, rate: float, conn) -> None:
    """Child process: serve ``root``; answer "url", "clear", "bytes" and "stop" on ``conn``."""
    with ArtifactServer(root, rate=rate) as server:
        while True:
            command = conn.recv()
            if command == "url":
                conn.send(server.url)
            elif command == "clear":
                server.clear()
                conn.send(None)
            elif command == "bytes":
                conn.send(server.bytes_sent())
            else:
                conn.send(None)
                return


class Server:
    """An :class:`ArtifactServer` in a child process."""

    def __init__(self, root: Path, rate: float):
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=serve, args=(str(root), rate, child), daemon=True)
        self.process.start()
        self.url = self.ask("url")

    def ask(self, command: str):
        self.conn.send(command)
        return self.conn.recv()

    def close(self) -> None:
        self.ask("stop")
        self.process.join()


def run_mode(mode: str, url: str, memory: int | None, options: RemoteOptions, prompt: str, server: Server) -> dict:
    server.ask("clear")
    started = time.perf_counter()
    if mode == "whole stack first":
        with RemoteReader(url, options=options) as reader:
            reader.prefetch(0, len(reader.manifest.stack))
            reader.read_base()  # downloads the base (and checks it)
    progressive = mode == "progressive"
    tokenizer = bitstack.load_tokenizer(url, remote=options)  # first: it would share the link with the blocks
    model = bitstack.load(url, memory, device="cpu", remote=options, progressive=progressive)
    returned = time.perf_counter() - started
    blocks_at_first = model.bitstack.loaded  # when the step begins (a progressive model may grow before its forward)
    first_token(model, tokenizer, prompt)
    ttft = time.perf_counter() - started
    received = server.ask("bytes")
    full = ttft
    if progressive:
        if not model.bitstack.progressive.wait(timeout=3600):
            raise RuntimeError("progressive loading did not reach the budget")
        full = time.perf_counter() - started
    model.bitstack.reader.close()
    return {"ttft_s": ttft, "model_returned_s": returned, "bytes_at_first_token": received, "blocks_at_first_token": blocks_at_first,
            "budget_attached_s": full, "blocks": model.bitstack.loaded}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", required=True, help="local artifact folder to serve")
    parser.add_argument("--memory", default=None, help="budget (default: the whole stack)")
    parser.add_argument("--rate", default="50MB", help="link rate in bytes per second, e.g. 50MB (default: 50MB)")
    parser.add_argument("--connections", type=int, default=4, help="parallel connections (default: 4)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of every mode (default: 3)")
    parser.add_argument("--prompt", default="The capital of France is", help="prompt of the first token")
    parser.add_argument("--out", default=None, help="write the result here (benchmarks/resultfile.py schema)")
    args = parser.parse_args(argv)
    artifact = Path(args.artifact).resolve()
    rate = parse_memory(args.rate)
    memory = None if args.memory is None else parse_memory(args.memory)
    warm = bitstack.load(artifact, memory, device="cpu")  # imports and first model build, outside the timings
    first_token(warm, bitstack.load_tokenizer(artifact), args.prompt)
    manifest = warm.bitstack.manifest
    del warm
    load_before = os.getloadavg()[0]
    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    server = Server(artifact.parent, rate)
    with tempfile.TemporaryDirectory() as scratch:
        url = f"{server.url}/{artifact.name}"
        for repeat in range(args.repeats):
            for mode in MODES:
                options = RemoteOptions(cache_dir=Path(scratch) / f"{repeat}-{MODES.index(mode)}", connections=args.connections)
                result = run_mode(mode, url, memory, options, args.prompt, server)
                runs[mode].append(result)
                print(f"[{repeat}] {mode:18s} model {result['model_returned_s']:6.2f} s, first token {result['ttft_s']:6.2f} s  "
                      f"({format_bytes(result['bytes_at_first_token'])} received, {result['blocks_at_first_token']} blocks)  "
                      f"budget attached {result['budget_attached_s']:6.2f} s", flush=True)
    server.close()
    def median(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[mode])

    rows = []
    for mode in MODES:
        ready, ttft = median(mode, "model_returned_s"), median(mode, "ttft_s")
        rows.append([mode, round(ready, 3), round(ready / median(MODES[0], "model_returned_s"), 3), round(ttft, 3),
                     round(ttft / median(MODES[0], "ttft_s"), 3), round(median(mode, "blocks_at_first_token")),
                     round(median(mode, "bytes_at_first_token") / 1e6, 2), round(median(mode, "budget_attached_s"), 3)])
    columns = ["mode", "model returned (s)", "ratio", "first token (s)", "ratio", "blocks when the step began",
               "MB received by first token", "budget attached (s)"]
    print()
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(str(c) for c in row))
    if args.out:
        from benchmarks.resultfile import write_result

        budget = "whole stack" if memory is None else format_bytes(memory)
        notes = (f"{artifact.name} ({len(manifest.stack)} blocks, floor {format_bytes(manifest.floor_bytes)}, full "
                 f"{format_bytes(manifest.full_bytes)}) served on 127.0.0.1 at {format_bytes(rate)}/s (all connections "
                 f"together, server in a child process), budget {budget}, {args.connections} connections, CPU, "
                 f"{torch.get_num_threads()} torch threads, {args.repeats} repeats interleaved, each from an empty cache; medians, ratios against whole stack "
                 "first. 'model returned': the fetch and the load (tokenizer first). 'first token' adds one greedy "
                 "step, whose CPU compute grows with the blocks attached (the progressive model computes it with "
                 "fewer blocks, those attached when the step began). Load average "
                 f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after (other jobs share the "
                 f"{os.cpu_count()} cores).")
        path = write_result(args.out, title="Remote artifacts: time to first token over a rate-limited link",
                            topic="remote", columns=columns, rows=rows, notes=notes, extra={"runs": runs, "load_average": [load_before, os.getloadavg()[0]]})
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
