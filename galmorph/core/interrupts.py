"""Ctrl-C and SIGTERM that stop a command within seconds, wherever the main thread is.

Python raises KeyboardInterrupt wherever the main thread happens to be when the signal
handler runs, and three places made that unreliable when `galmorph train` was interrupted
(issue 12):

- inside a finalizer or weakref callback run by the garbage collector (SQLAlchemy's
  `_collection_gced` was seen) Python prints "Exception ignored" and drops the exception:
  the signal is lost and training goes on to its last epoch;
- C extensions turn it into another error (numpy's import: "PyCapsule_Import could not
  import module datetime");
- a second signal (`mlflow run` sends SIGTERM after the terminal's SIGINT) lands inside the
  cleanup that marks the run KILLED, which then never happens.

So, while `installed()`, a signal is a request that stays pending until a handler of the
KeyboardInterrupt calls `handled()`: the signal handler raises KeyboardInterrupt, and a
watchdog thread raises it again every RETRY_S seconds while the request is pending, or at
its next look once sys.unraisablehook reports a finalizer dropped it.
`pending()` tells a handler that an error stands for an interrupt. Inside `held()` (a
cleanup that must not be cut short) signals are recorded and raised when it ends, unless
the cleanup itself outlasts HOLD_S.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time

RETRY_S = 2.0  # a lost interrupt is raised again after this long
HOLD_S = 10.0  # a cleanup in held() longer than this is interrupted after all
_POLL_S = 0.2

# The signal handler only assigns these (atomic under the GIL): it runs in the main thread
# between any two bytecodes, possibly while that thread holds a lock, so it takes none.
_pending: int | None = None  # the signal of the interrupt no handler has taken yet
_since = 0.0  # when it arrived
_dropped = False  # a finalizer dropped its KeyboardInterrupt: raise it again at once
_held_since: list[float] = []  # start times of the held() blocks the main thread is in
_lock = threading.Lock()  # _active against the watchdog's check-then-signal
_active = False
_watchdog: threading.Thread | None = None


def _name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _handler(signum, frame):
    global _pending, _since
    if _pending is None:
        _pending, _since = signum, time.monotonic()
    if _held_since and time.monotonic() - _held_since[0] < HOLD_S:
        return  # raised when the cleanup ends (held)
    raise KeyboardInterrupt(_name(signum))


def _watch(main_ident: int) -> None:
    """Raise a pending interrupt in the main thread again, every RETRY_S, until handled."""
    global _dropped
    last = 0.0
    while True:
        time.sleep(_POLL_S)
        with _lock:  # installed() cannot restore the old handlers between the check and the signal
            if not _active:
                return
            signum = _pending
            if signum is not None and (_dropped or time.monotonic() - max(_since, last) >= RETRY_S):
                _dropped, last = False, time.monotonic()
                signal.pthread_kill(main_ident, signum)  # runs _handler in the main thread


def _unraisable(unraisable) -> None:
    """sys.unraisablehook: our KeyboardInterrupt, dropped by a finalizer or weakref callback,
    is raised again by the watchdog (not here: an exception of the hook is dropped too), and
    its "Exception ignored" report is left out. Anything else goes to the previous hook."""
    global _dropped
    if isinstance(unraisable.exc_value, KeyboardInterrupt) and _pending is not None:
        _dropped = True
        return
    _previous_hook(unraisable)


_previous_hook = sys.__unraisablehook__


def pending() -> str | None:
    """The name of the signal whose interrupt no handler has taken yet (SIGINT, SIGTERM), or None."""
    signum = _pending
    return None if signum is None else _name(signum)


def handled() -> str | None:
    """Called where a KeyboardInterrupt (or an error that stands for one) is handled: the
    interrupt arrived, stop raising it. Returns pending()'s value before."""
    global _pending
    signum, _pending = _pending, None
    return None if signum is None else _name(signum)


@contextlib.contextmanager
def held():
    """A block that signals do not cut short (the cleanup of an interrupted run): a signal
    arriving in it is raised as KeyboardInterrupt when it ends, or at once after HOLD_S."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _held_since.append(time.monotonic())
    try:
        yield
    finally:
        _held_since.pop()
    if not _held_since and sys.exc_info()[0] is None and pending() is not None:
        raise KeyboardInterrupt(pending())


@contextlib.contextmanager
def installed(then=None):
    """SIGTERM, and SIGINT unless the process was started with it ignored (a background job,
    by POSIX), raise KeyboardInterrupt until handled, for the duration of the block; after
    it they get `then` (e.g. signal.SIG_IGN for a process on its way out), or by default
    their previous handlers. Nested blocks change nothing."""
    global _active, _watchdog, _previous_hook, _dropped
    if threading.current_thread() is not threading.main_thread() or _active:
        yield
        return
    previous = {signal.SIGTERM: signal.getsignal(signal.SIGTERM)}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        previous[signal.SIGINT] = signal.default_int_handler
    handled()
    _active, _dropped = True, False
    _watchdog = threading.Thread(target=_watch, args=(threading.get_ident(),), name="galmorph-interrupts",
                                 daemon=True)
    _watchdog.start()
    _previous_hook, sys.unraisablehook = sys.unraisablehook, _unraisable
    for signum in previous:
        signal.signal(signum, _handler)
    try:
        yield
    finally:
        with _lock:  # the watchdog sends nothing after this
            _active = False
        for signum, old in previous.items():
            after = then if then is not None else old
            signal.signal(signum, signal.SIG_DFL if after is None else after)  # None: not set from Python
        sys.unraisablehook = _previous_hook
        _watchdog.join(timeout=1)
        _watchdog = None
        handled()
