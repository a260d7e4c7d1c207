"""The text of one sequence as its tokens arrive: decoded, cut at the first stop string, and
released to a stream only when it can no longer change.

Text is held back while it ends with an incomplete UTF-8 character (the tokenizer decodes it
as U+FFFD) or with the beginning of a stop string, so that the streamed pieces always add up to
the final text, and a stop string never reaches the client.
"""

from __future__ import annotations

from typing import Callable

REPLACEMENT = "\ufffd"


def stop_prefix_length(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of one of ``stops``."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


def find_stop(text: str, stops: tuple[str, ...], start: int) -> int:
    """Index of the earliest stop string in ``text[start:]`` (as an index of ``text``), or -1."""
    found = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(found) if found else -1


class TextStream:
    """Decoded text of generated tokens with stop strings (see the module docstring).

    ``decode`` maps token ids to text (e.g. ``tokenizer.decode(ids, skip_special_tokens=True)``).
    """

    def __init__(self, decode: Callable[[list[int]], str], stops: tuple[str, ...] = ()):
        self.decode = decode
        self.stops = tuple(s for s in stops if s)
        self.tokens: list[int] = []
        self.text = ""
        self.stopped = False  # a stop string was found: ``text`` ends before it
        self._sent = 0

    def add(self, token: int) -> bool:
        """Append one generated token; True when the text now contains a stop string."""
        if self.stopped:
            raise RuntimeError("add() after a stop string")
        self.tokens.append(token)
        previous = len(self.text)
        self.text = self.decode(self.tokens)
        if self.stops:
            longest = max(len(s) for s in self.stops)
            at = find_stop(self.text, self.stops, max(0, min(previous, len(self.text)) - longest + 1))
            if at >= 0:
                self.text = self.text[:at]
                self.stopped = True
        return self.stopped

    def release(self, final: bool = False) -> str:
        """The text not yet released that can no longer change (all of it when ``final``)."""
        end = len(self.text)
        if not (final or self.stopped):
            end -= stop_prefix_length(self.text, self.stops)
            while end > self._sent and self.text[end - 1] == REPLACEMENT:
                end -= 1
        if end <= self._sent:
            return ""
        piece, self._sent = self.text[self._sent:end], end
        return piece
