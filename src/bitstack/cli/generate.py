"""``bitstack generate`` and ``bitstack chat``: text from an artifact at a budget that can change
while it runs (``--memory auto``, or ``/memory SIZE`` in a chat).  Tokens are printed as they
come; status lines go to stderr."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from bitstack.cli.common import artifact_arguments, print_budget_note, settings_options
from bitstack.codecs.base import setting
from bitstack.errors import BitstackError, InputError
from bitstack.remote.cli_options import progress_printer


@dataclass(frozen=True)
class GenerateSettings:
    """How ``generate`` and ``chat`` sample (their options and defaults)."""

    max_new_tokens: int = setting(50, "tokens to generate", minimum=1)
    temperature: float = setting(0.0, "sampling temperature; 0 = greedy")
    top_p: float | None = setting(None, "with --temperature > 0: nucleus sampling, 0 < P <= 1", type=float)
    top_k: int | None = setting(None, "with --temperature > 0: sample from the K likeliest tokens", type=int)
    seed: int | None = setting(None, "seed of the sampling (default: unseeded)", type=int)
    system: str | None = setting(None, "system prompt (with a chat template; else prepended as text)", type=str)
    reserve: str = setting("512MB", "with --memory auto: memory to leave free")
    hysteresis: str = setting("16MB", "with --memory auto: dead band against resize churn")

CHAT_HELP = """commands (a line that starts with / is never sent to the model):
  /memory SIZE   resize in place, e.g. /memory 120MB or /memory 3.5bits (/memory full: the whole stack)
  /size          resident bytes and blocks
  /reset         forget the conversation
  /help          this help
  /quit          end the chat"""


def _status(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(f"[bitstack] {text}", file=sys.stderr, flush=True)


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
            _status(args, f"{r.old_bytes / 1e6:.1f} MB -> {r.new_bytes / 1e6:.1f} MB ({r.new_blocks} blocks, "
                          f"{event.free_bytes / 1e6:.0f} MB free, {r.seconds * 1e3:.0f} ms)")

        auto = AutoResizer(model, reserve=args.reserve, hysteresis=args.hysteresis, on_change=report).start()
    else:
        model = load(args.artifact, args.memory, device=args.device, dtype=args.dtype, progressive=args.progressive,
                     on_progress=progress_printer if args.progressive else None)
        auto = getattr(model.bitstack, "progressive", None)  # stopped like an AutoResizer when done
        if not args.quiet:
            print_budget_note(model)
    return model, tokenizer, auto


def _floor(path: str) -> int:
    from bitstack.artifact.opening import open_artifact

    with open_artifact(path, verify=False) as reader:
        return reader.manifest.floor_bytes


def _generate(model, tokenizer, ids, args, streamer=None) -> "torch.Tensor":  # noqa: F821 (torch is imported lazily)
    import torch

    sample = args.temperature > 0
    if args.seed is not None:
        torch.manual_seed(args.seed)
    with torch.no_grad():
        return model.generate(**ids, max_new_tokens=args.max_new_tokens, do_sample=sample,
                              temperature=args.temperature if sample else None,
                              top_p=args.top_p if sample else None, top_k=args.top_k if sample else None,
                              streamer=streamer,
                              pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)


def _streamer(tokenizer):
    from transformers import TextStreamer

    return TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def _chat_prompt(tokenizer, turns: list[dict]) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    return "\n".join(turn["content"] for turn in turns) + "\n"


def run_generate(args: argparse.Namespace) -> int:
    if not args.prompt.strip():
        raise InputError("--prompt is empty: give the text to continue")
    model, tokenizer, auto = _load_live(args)
    try:
        if args.system is not None:  # the prompt becomes a user turn after the system turn
            text = _chat_prompt(tokenizer, [{"role": "system", "content": args.system}, {"role": "user", "content": args.prompt}])
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.bitstack.device)
        else:
            print(args.prompt, end="", flush=True)
            ids = tokenizer(args.prompt, return_tensors="pt").to(model.bitstack.device)
        _generate(model, tokenizer, ids, args, _streamer(tokenizer))
    finally:
        if auto is not None:
            auto.stop()
    return 0


def chat_command(model, text: str) -> str | None:
    """Run the chat command ``text`` (a line starting with ``/``) on ``model``: the status line to
    print, ``""`` for /reset, ``None`` for /quit; InputError for an unknown or malformed command."""
    from bitstack.runtime.budget import memory_bytes

    name, _, rest = text.partition(" ")
    rest = rest.strip()
    if name in ("/quit", "/size", "/reset", "/help") and rest:
        raise InputError(f"{name} takes no argument")
    if name == "/quit":
        return None
    if name == "/reset":
        return ""
    if name == "/help":
        return CHAT_HELP
    if name == "/size":
        return f"{memory_bytes(model) / 1e6:.1f} MB resident, {model.bitstack.loaded} blocks"
    if name == "/memory":
        if not rest:
            raise InputError("/memory needs a size, e.g. /memory 120MB, /memory 3.5bits or /memory full")
        report = model.bitstack.resize(None if rest == "full" else rest)
        return (f"{report.old_bytes / 1e6:.1f} MB -> {report.new_bytes / 1e6:.1f} MB "
                f"({report.new_blocks} blocks, {report.seconds * 1e3:.1f} ms)")
    raise InputError(f"unknown command {name}: type /help for the commands")


def run_chat(args: argparse.Namespace) -> int:
    """Read user turns from stdin; lines starting with ``/`` are commands (:func:`chat_command`)."""
    model, tokenizer, auto = _load_live(args)
    system = [{"role": "system", "content": args.system}] if args.system is not None else []
    history: list[dict] = []
    interactive = sys.stdin.isatty()
    if interactive and not args.quiet:
        _status(args, "type a message, or /help for the commands")
    try:
        while True:
            if interactive:
                print("you> ", end="", flush=True)
            line = sys.stdin.readline()
            if not line:
                break
            text = line.strip()
            if not text:
                continue
            if text.startswith("/"):
                try:
                    status = chat_command(model, text)
                except BitstackError as err:
                    print(f"[bitstack] error: {err}", file=sys.stderr, flush=True)
                    continue
                if status is None:
                    break
                if status == "":
                    history = []
                    status = "the conversation is forgotten"
                print(f"[bitstack] {status}", file=sys.stderr, flush=True)
                continue
            history.append({"role": "user", "content": text})
            ids = tokenizer(_chat_prompt(tokenizer, system + history), return_tensors="pt",
                            add_special_tokens=False).to(model.bitstack.device)
            print("bot> ", end="", flush=True)
            out = _generate(model, tokenizer, ids, args, _streamer(tokenizer))
            reply = tokenizer.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True).strip()
            history.append({"role": "assistant", "content": reply})
    finally:
        if auto is not None:
            auto.stop()
    return 0


def _live_options(p: argparse.ArgumentParser) -> None:
    settings_options(p, GenerateSettings)
    p.add_argument("--quiet", action="store_true", help="no status lines or progress bars")
    p.add_argument("--progressive", action="store_true", help="start at the floor and attach the rest of the budget "
                   "between forward passes as it arrives (for a URL: as it downloads)")


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate text at a budget", description="Generate text from an artifact at a memory budget, "
                       "printing tokens as they come (--memory auto: follow the device's free memory while generating).")
    artifact_arguments(p)
    p.add_argument("--prompt", required=True, help="text to continue")
    _live_options(p)
    p.set_defaults(func=run_generate)

    p = sub.add_parser("chat", help="chat on stdin at a budget (resizable)", description="Chat with an artifact: one user turn per "
                       "stdin line; /memory SIZE resizes in place, /size reports, /reset forgets, /help lists the commands, "
                       "/quit ends (--memory auto follows free memory). Status lines go to stderr.")
    artifact_arguments(p)
    _live_options(p)
    p.set_defaults(func=run_chat)
