"""``bitstack generate`` and ``bitstack chat``: text from an artifact at a budget that can change
while it runs (``--memory auto``, or ``/memory SIZE`` in a chat)."""

from __future__ import annotations

import argparse
import sys

from bitstack.cli.common import artifact_arguments
from bitstack.errors import BitstackError, InputError
from bitstack.remote.cli_options import progress_printer


def _load_live(args: argparse.Namespace):
    """Load for generate/chat; with ``--memory auto`` start an AutoResizer that reports to stderr."""
    from bitstack.runtime.loader import load, load_tokenizer

    if args.memory == "auto" and args.progressive:
        raise InputError("--progressive needs a fixed --memory: --memory auto already starts at the floor")
    auto = None
    tokenizer = load_tokenizer(args.artifact)  # first: a progressive load's blocks follow it on the link
    if args.memory == "auto":
        from bitstack.runtime.auto import AutoResizer

        model = load(args.artifact, _floor(args.artifact), device=args.device, dtype=args.dtype)

        def report(event) -> None:
            r = event.report
            print(f"[bitstack] {r.old_bytes / 1e6:.1f} MB -> {r.new_bytes / 1e6:.1f} MB ({r.new_blocks} blocks, "
                  f"{event.free_bytes / 1e6:.0f} MB free, {r.seconds * 1e3:.0f} ms)", file=sys.stderr)

        auto = AutoResizer(model, reserve=args.reserve, hysteresis=args.hysteresis, on_change=report).start()
    else:
        model = load(args.artifact, args.memory, device=args.device, dtype=args.dtype, progressive=args.progressive,
                     on_progress=progress_printer if args.progressive else None)
        auto = getattr(model.bitstack, "progressive", None)  # stopped like an AutoResizer when done
    return model, tokenizer, auto


def _floor(path: str) -> int:
    from bitstack.artifact.reader import open_artifact

    with open_artifact(path, verify=False) as reader:
        return reader.manifest.floor_bytes


def _generate(model, tokenizer, ids, args) -> "torch.Tensor":  # noqa: F821 (torch is imported lazily)
    import torch

    sample = args.temperature > 0
    with torch.no_grad():
        return model.generate(**ids, max_new_tokens=args.max_new_tokens, do_sample=sample,
                              temperature=args.temperature if sample else None, top_p=None, top_k=None,
                              pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)


def run_generate(args: argparse.Namespace) -> int:
    if not args.prompt.strip():
        raise InputError("--prompt is empty: give the text to continue")
    model, tokenizer, auto = _load_live(args)
    try:
        ids = tokenizer(args.prompt, return_tensors="pt").to(model.bitstack.device)
        out = _generate(model, tokenizer, ids, args)
    finally:
        if auto is not None:
            auto.stop()
    print(tokenizer.decode(out[0], skip_special_tokens=True))
    return 0


def run_chat(args: argparse.Namespace) -> int:
    """Read user turns from stdin; ``/memory SIZE`` resizes, ``/size`` reports, ``/quit`` ends."""
    from bitstack.runtime.budget import memory_bytes

    model, tokenizer, auto = _load_live(args)
    history: list[dict] = []
    interactive = sys.stdin.isatty()
    try:
        while True:
            if interactive:
                print("you> ", end="", flush=True)
            line = sys.stdin.readline()
            if not line or line.strip() == "/quit":
                break
            text = line.strip()
            if not text:
                continue
            if text == "/size":
                print(f"[bitstack] {memory_bytes(model) / 1e6:.1f} MB resident, {model.bitstack.loaded} blocks")
                continue
            if text.startswith("/memory"):
                try:
                    report = model.bitstack.resize(text.split(maxsplit=1)[1] if " " in text else None)
                except BitstackError as err:
                    print(f"[bitstack] {err}")
                    continue
                print(f"[bitstack] {report.old_bytes / 1e6:.1f} MB -> {report.new_bytes / 1e6:.1f} MB "
                      f"({report.new_blocks} blocks, {report.seconds * 1e3:.1f} ms)")
                continue
            history.append({"role": "user", "content": text})
            if getattr(tokenizer, "chat_template", None):
                prompt = tokenizer.apply_chat_template(history, add_generation_prompt=True, tokenize=False)
            else:
                prompt = "\n".join(turn["content"] for turn in history) + "\n"
            ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.bitstack.device)
            out = _generate(model, tokenizer, ids, args)
            reply = tokenizer.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True).strip()
            history.append({"role": "assistant", "content": reply})
            print(f"bot> {reply}", flush=True)
    finally:
        if auto is not None:
            auto.stop()
    return 0


def _live_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=50, help="tokens to generate (default: 50)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--reserve", default="512MB", help="with --memory auto: memory to leave free (default: 512MB)")
    p.add_argument("--hysteresis", default="16MB", help="with --memory auto: dead band against resize churn (default: 16MB)")
    p.add_argument("--progressive", action="store_true", help="start at the floor and attach the rest of the budget "
                   "between forward passes as it arrives (for a URL: as it downloads)")


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate text at a budget", description="Generate text from an artifact at a memory budget "
                       "(--memory auto: follow the device's free memory while generating).")
    artifact_arguments(p)
    p.add_argument("--prompt", required=True, help="text to continue")
    _live_options(p)
    p.set_defaults(func=run_generate)

    p = sub.add_parser("chat", help="chat on stdin at a budget (resizable)", description="Chat with an artifact: one user turn per "
                       "stdin line; /memory SIZE resizes in place, /size reports, /quit ends (--memory auto follows free memory).")
    artifact_arguments(p)
    _live_options(p)
    p.set_defaults(func=run_chat)
