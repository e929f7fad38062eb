"""SIGINT, SIGTERM (and SIGHUP) for a sweep driver: stop where it is, keep what is finished, say how to resume.

`handling()` makes both signals raise `Interrupted` (a KeyboardInterrupt that remembers its
signal) in the driver, so the local executor stops mid-stage (its partial folder is kept for
the resume) and no later stage or wave starts. While a Ray Tune wave runs (`graceful(...)`),
the signal instead asks Tune to stop: Tune stops every running trial (their actors end, their
leases drop), returns, and `raise_if_interrupted()` in the wave turns that into Interrupted.
A second signal during that stop raises at once.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}  # SIGHUP: the terminal went away
MESSAGE = "interrupted: finished stage outputs are kept; rerun the same command to resume"


class Interrupted(KeyboardInterrupt):
    """The sweep was stopped by a signal; `signum` is SIGINT or SIGTERM."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """Returns the shell's exit status for this signal: 130 (SIGINT) or 143 (SIGTERM)."""
        return EXIT.get(self.signum, 128 + int(self.signum))


_state: dict = {"signum": None, "stop": None, "asked": False}


def _handler(signum, frame) -> None:
    _state["signum"] = _state["signum"] or signum
    stop = _state["stop"]
    if stop is not None and not _state["asked"]:
        _state["asked"] = True
        if stop():  # asked Tune to stop its trials; the wave raises when Tune returns
            return
    raise Interrupted(_state["signum"])


def signalled() -> int | None:
    """Returns the signal that interrupted the running invocation, None if none did (or none runs)."""
    return _state["signum"] if _state.get("active") else None


def raise_if_interrupted() -> None:
    """Raises Interrupted if a signal arrived (e.g. while Tune was stopping its trials)."""
    if _state["signum"] is not None:
        raise Interrupted(_state["signum"])


@contextmanager
def handling() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise Interrupted (main thread only; elsewhere nothing changes).

    An error that ends the block after a signal came is raised as Interrupted too: native code
    (safetensors, say) may swallow the Interrupted raised inside one of its callbacks and raise its
    own error instead (seen: "could not determine the shape of object type ...").
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.getsignal(s) for s in EXIT}
    _state.update(signum=None, stop=None, asked=False, active=True)
    for s in EXIT:
        signal.signal(s, _handler)
    try:
        yield
    except KeyboardInterrupt:
        raise
    except BaseException as e:
        if _state["signum"] is None:
            raise
        raise Interrupted(_state["signum"]) from e
    finally:
        _state["active"] = False
        for s, h in old.items():
            signal.signal(s, h)


def reinstall() -> None:
    """Puts our handlers back after something replaced them (ray.init installs a SIGTERM handler that aborts)."""
    if threading.current_thread() is threading.main_thread() and _state.get("active"):
        for s in EXIT:
            signal.signal(s, _handler)


@contextmanager
def graceful(stop: Callable[[], bool]) -> Iterator[None]:
    """Within the block, the first signal calls `stop()` (True: it will wind down by itself) instead of raising."""
    _state.update(stop=stop, asked=False)
    try:
        yield
    finally:
        _state.update(stop=None)
