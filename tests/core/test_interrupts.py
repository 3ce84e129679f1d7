"""galmorph.core.interrupts with real signals, each test in a fresh interpreter (its signal
handlers are the process's): an interrupt cannot get lost, a cleanup is not cut short, and a
SIGINT ignored from the start stays ignored."""

import signal
import subprocess
import sys

from conftest import REPO, child_env

PRELUDE = """
import signal, sys, threading, time
from galmorph.core import interrupts
interrupts.RETRY_S = 0.5  # (2 s in use) read by the watchdog at every look
MAIN = threading.main_thread().ident

def wait_for_interrupt(seconds):
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < seconds:
            pass
    except KeyboardInterrupt as exc:
        return str(exc), time.monotonic() - t0
    return None, seconds
"""


def _run(code: str, sigint=signal.SIG_DFL) -> str:
    proc = subprocess.run([sys.executable, "-c", PRELUDE + code], capture_output=True, text=True, timeout=120,
                          env=child_env(), cwd=REPO, preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_an_interrupt_dropped_by_a_finalizer_is_raised_again():
    out = _run("""
class Drops:
    def __del__(self):
        signal.pthread_kill(MAIN, signal.SIGINT)
        for _ in range(200_000):  # the KeyboardInterrupt is raised here, and dropped with the finalizer
            pass

with interrupts.installed():
    obj = Drops()
    del obj
    assert interrupts.pending() == "SIGINT"
    print(*wait_for_interrupt(30))
    assert interrupts.handled() == "SIGINT" and interrupts.pending() is None
    print(*wait_for_interrupt(2 * interrupts.RETRY_S + 1))  # handled: not raised again
""")
    again, after = out.split("\n")[0].split()
    assert again == "SIGINT" and float(after) < 3 * 0.5, out
    assert out.split("\n")[1].startswith("None"), out


def test_a_signal_in_a_held_cleanup_is_raised_when_it_ends():
    out = _run("""
with interrupts.installed():
    try:
        with interrupts.held():
            signal.pthread_kill(MAIN, signal.SIGTERM)
            print("cleanup", *wait_for_interrupt(1))  # not cut short
        print("not reached")
    except KeyboardInterrupt as exc:
        print("after", exc)
    interrupts.handled()
    try:
        raise KeyboardInterrupt("first")
    except KeyboardInterrupt:
        with interrupts.held():  # the cleanup of an interrupt: a second signal joins the first
            signal.pthread_kill(MAIN, signal.SIGINT)
            wait_for_interrupt(0.5)
        print("second held back", interrupts.pending())
""")
    assert out.splitlines() == ["cleanup None 1", "after SIGTERM", "second held back SIGINT"], out


def test_a_cleanup_that_outlasts_the_hold_is_interrupted():
    out = _run("""
interrupts.HOLD_S = 1.0
with interrupts.installed():
    try:
        with interrupts.held():
            signal.pthread_kill(MAIN, signal.SIGINT)
            print(*wait_for_interrupt(30))
    except KeyboardInterrupt:
        print("and again as it ends: not handled()")
""")
    first, second = out.splitlines()
    reason, after = first.split()
    assert reason == "SIGINT" and 1.0 <= float(after) < 1.0 + 3 * 0.5, out
    assert second == "and again as it ends: not handled()"


def test_handlers_are_restored_and_an_inherited_ignored_sigint_stays_ignored():
    out = _run("""
before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
with interrupts.installed():
    print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN, signal.getsignal(signal.SIGTERM) is interrupts._handler)
print((signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before)
""", sigint=signal.SIG_IGN)
    assert out.split() == ["True", "True", "True"], out
