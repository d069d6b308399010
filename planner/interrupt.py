"""Stopping long work cleanly on Ctrl-C or SIGTERM: a process-wide stop request.

A signal does not kill ``planner solve`` in the middle of a write. Instead the
first SIGINT or SIGTERM *requests a stop*: every CP-SAT search running or started
later is told to stop (``CpSolver.stop_search``, as if its time limit had passed),
so the solver returns the best plan it has, which is then checked and written
whole. The work runs in a thread while the main thread, where Python runs signal
handlers, waits; a second signal ends the command at once and nothing is written.

Library code only calls :func:`stoppable` (around a search) and
:func:`stop_reason`; :func:`run_stoppable` belongs to commands.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TypeVar

from planner.errors import EXIT_INTERRUPTED, Interrupted

T = TypeVar("T")
SIGNALS = (signal.SIGINT, signal.SIGTERM)
REPEAT_S = 0.1  # while a stop is pending, running searches are told again this often

_lock = threading.Lock()
_reason: str | None = None
_callbacks: list[Callable[[], None]] = []


def request_stop(reason: str) -> None:
    """Ask every running and future search to stop (the first reason is kept)."""
    global _reason
    with _lock:
        first = _reason is None
        if first:
            _reason = reason
    _stop_all()
    if first:  # a search starting right now may miss one call: repeat while stopping
        threading.Thread(target=_repeat_stop, name="planner-stop", daemon=True).start()


def _stop_all() -> None:
    with _lock:
        callbacks = list(_callbacks)
    for cb in callbacks:
        cb()


def _repeat_stop() -> None:
    while _reason is not None:
        _stop_all()
        time.sleep(REPEAT_S)


def stop_reason() -> str | None:
    """Why a stop was requested ('SIGINT', 'SIGTERM'), or None."""
    return _reason


def stop_requested(stop: threading.Event | None = None) -> bool:
    """A stop was requested: a signal (:func:`stop_reason`), or the caller's ``stop`` event
    (the planning service's jobs) is set."""
    return _reason is not None or (stop is not None and stop.is_set())


def reset() -> None:
    """Forget a stop request (a new command in the same process)."""
    global _reason
    with _lock:
        _reason = None


@contextmanager
def stoppable(stop: Callable[[], None]) -> Iterator[None]:
    """Run a search during which a stop request calls ``stop`` (at once, if one is
    already pending)."""
    with _lock:
        _callbacks.append(stop)
        pending = _reason is not None
    if pending:
        stop()
    try:
        yield
    finally:
        with _lock:
            _callbacks.remove(stop)


def exit_code(reason: str | None) -> int:
    """128 + the signal's number, the shell's convention (130 for SIGINT)."""
    try:
        return 128 + int(signal.Signals[reason or "SIGINT"])
    except KeyError:
        return EXIT_INTERRUPTED


@contextmanager
def signals_raise() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` here (so an atomic write in
    progress removes its temporary file instead of being killed half-way)."""
    def handler(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        request_stop(name)
        raise Interrupted(f"interrupted ({name}); nothing written")

    with _handlers(handler):
        yield


@contextmanager
def _handlers(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; run without them
        return
    old = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run_stoppable(work: Callable[[], T], on_stop: Callable[[str], None] | None = None) -> T:
    """Run ``work`` in a thread; the first SIGINT/SIGTERM requests a stop (``work``
    should then return soon with what it has), a second one raises
    :class:`Interrupted` at once."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["result"] = work()
        except BaseException as exc:
            box["error"] = exc

    def handler(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stop_reason() is not None:
            exc = Interrupted(f"interrupted twice ({name}); nothing written")
            exc.exit_code = exit_code(name)
            raise exc
        request_stop(name)
        if on_stop is not None:
            on_stop(name)

    thread = threading.Thread(target=target, name="planner-work", daemon=True)
    try:
        with _handlers(handler):
            thread.start()
            while thread.is_alive():
                thread.join(0.1)
    except Interrupted as exc:
        # The work may still be (or have just been) inside native code: CP-SAT's C++
        # threads abort the process ("terminate called without an active exception")
        # when the interpreter tears down around them. The work writes no file
        # (commands write after it returns), so end the process here, at once.
        _quit_now(str(exc), exc.exit_code)
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]


def _quit_now(message: str, code: int) -> None:
    """Print the error line as the CLI would and end the process without teardown."""
    sys.stdout.flush()
    sys.stderr.write(f"Error: {message}\n")
    sys.stderr.flush()
    os._exit(code)


@contextmanager
def keyboard_interrupt_on_signals() -> Iterator[list[str]]:
    """SIGINT and SIGTERM both raise KeyboardInterrupt (once; later ones are only
    recorded, so the cleanup the first one started is not cut short). Yields the list
    of signal names received."""
    got: list[str] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        got.append(signal.Signals(signum).name)
        if len(got) == 1:
            raise KeyboardInterrupt

    with _handlers(handler):
        yield got
