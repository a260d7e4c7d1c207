"""Progressive loading: a model returned at its floor grows to its budget while it already runs.

``bitstack.load(URL, memory, progressive=True, on_progress=callback)`` loads the floor (base,
tokenizer-free, first block of every weight) and returns the model with a
:class:`ProgressiveLoader` running as ``model.bitstack.progressive``.  Its background thread
fetches the rest of the budget's prefix ahead (for a remote artifact, on a second thread through
:meth:`RemoteReader.prefetch`), and, as blocks arrive, attaches them with
``model.bitstack.move_to`` — between two forward passes, like any resize — at most every
``interval`` seconds, until the budget is reached.  A local artifact is grown in one resize.

Control: :meth:`ProgressiveLoader.wait` (until done; re-raises a failure), :meth:`~ProgressiveLoader.stop`
(stop fetching and attaching; the model keeps what is attached).  A resize by anyone else ends
progressive loading (it does not fight the caller): call :meth:`~ProgressiveLoader.stop` before
resizing by hand to be sure.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

from torch import nn


@dataclass(frozen=True)
class Progress:
    """Where a progressive load stands (what the callback receives)."""

    loaded_blocks: int  # blocks of the stack attached
    target_blocks: int  # blocks the budget holds
    resident_bytes: int  # resident weight bytes now
    target_bytes: int  # resident weight bytes at the target
    budget: int | None  # the budget in bytes (None: the whole stack)
    fetched_bytes: int  # bytes received over the network by the model's reader (0 for a local artifact)
    seconds: float  # since progressive loading started
    done: bool  # the target is attached
    stopped: bool  # ended before the target: stop(), a resize by someone else, or an error
    error: BaseException | None = None


class ProgressiveLoader:
    """Grows ``model`` (loaded at its floor) to ``target_blocks`` for budget ``memory`` in the background."""

    def __init__(self, model: nn.Module, memory: int | None, target_blocks: int,
                 on_progress: Callable[[Progress], None] | None = None, interval: float = 0.5):
        self.model = model
        self.memory = memory
        self.target = target_blocks
        self.on_progress = on_progress
        self.interval = interval
        self.error: BaseException | None = None
        self.progress: Progress | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._started = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="bitstack-progressive", daemon=True)
        self._fetch_error: BaseException | None = None
        self._fetch_done = threading.Event()

    def start(self) -> "ProgressiveLoader":
        self._thread.start()
        return self

    @property
    def done(self) -> bool:
        return self.progress is not None and self.progress.done

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until loading ends (or ``timeout`` seconds).  True once the target is attached;
        re-raises the failure of the background loading, if any."""
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.done

    def stop(self, timeout: float | None = None) -> None:
        """Stop fetching and attaching (requests in flight end first); the model keeps its blocks."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # ---- the background thread ----------------------------------------------------------------
    def _report(self, stopped: bool = False) -> None:
        stack = self.model.bitstack
        reader = stack.reader
        last = self.progress
        if last is not None and last.loaded_blocks == stack.loaded and last.done and self.error is None:
            return  # the final step was reported already
        self.progress = Progress(
            loaded_blocks=stack.loaded, target_blocks=self.target, resident_bytes=stack.resident_bytes,
            target_bytes=stack.prefix_bytes[self.target], budget=self.memory,
            fetched_bytes=getattr(reader, "bytes_fetched", 0), seconds=time.perf_counter() - self._started,
            done=stack.loaded >= self.target, stopped=stopped, error=self.error)
        if self.on_progress is not None:
            self.on_progress(self.progress)

    def _fetch(self, start: int) -> None:
        try:
            self.model.bitstack.reader.prefetch(start, self.target, on_record=self._wake.set, cancel=self._stop)
        except BaseException as err:  # handed to the attaching thread
            self._fetch_error = err
        finally:
            self._fetch_done.set()
            self._wake.set()

    def _run(self) -> None:
        stack = self.model.bitstack
        reader = stack.reader
        fetcher = None
        stopped = False
        try:
            self._report()
            if stack.loaded < self.target and hasattr(reader, "prefetch"):
                fetcher = threading.Thread(target=self._fetch, args=(stack.loaded,), name="bitstack-prefetch", daemon=True)
                fetcher.start()
            last_attach = 0.0
            expected = stack.loaded
            while stack.loaded < self.target:
                if self._stop.is_set():
                    stopped = True
                    break
                if self._fetch_error is not None:
                    raise self._fetch_error
                available = min(reader.cached_prefix(stack.loaded), self.target) if fetcher is not None else self.target
                if available <= stack.loaded:
                    if self._fetch_done.is_set() and reader.cached_prefix(stack.loaded) <= stack.loaded:
                        stopped = True  # the fetch ended early without an error: cancelled
                        break
                    self._wake.wait(self.interval)  # until more blocks are recorded
                    self._wake.clear()
                    continue
                wait = self.interval - (time.perf_counter() - last_attach)
                if available < self.target and wait > 0 and not self._fetch_done.is_set():
                    self._stop.wait(wait)  # throttle: let more arrive before the next attach
                    continue
                if stack.loaded != expected:  # someone else resized: do not fight them
                    stopped = True
                    break
                stack.move_to(available, self.memory)  # the prefix the fetch has completed
                expected = stack.loaded
                last_attach = time.perf_counter()
                self._report()
        except BaseException as err:
            self.error = err
            stopped = True
        finally:
            self._stop.set()  # ends the fetch thread's work after its requests in flight
            if fetcher is not None:
                fetcher.join()
            try:
                self._report(stopped=stopped or stack.loaded < self.target)
            except BaseException as err:  # a failing callback
                self.error = self.error or err
