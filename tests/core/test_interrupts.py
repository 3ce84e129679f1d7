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


def _run(code: str, sigint=signal.SIG_DFL) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", PRELUDE + code], capture_output=True, text=True, timeout=120,
                          env=child_env(), cwd=REPO, preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_an_interrupt_dropped_by_a_finalizer_is_raised_again_at_once():
    proc = _run("""
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
""")
    again, after = proc.stdout.split()
    assert again == "SIGINT" and float(after) < 1.0, proc.stdout  # not RETRY_S (2 s) later: the drop was seen
    assert "Exception ignored" not in proc.stderr, proc.stderr  # not lost, so not reported as such


def test_an_interrupt_swallowed_by_code_is_raised_again_until_handled():
    proc = _run("""
interrupts.RETRY_S = 0.5  # read by the watchdog at every look
with interrupts.installed():
    try:
        signal.pthread_kill(MAIN, signal.SIGTERM)
        wait_for_interrupt(30)
    except BaseException:  # as some libraries do
        pass
    print(*wait_for_interrupt(30))
    interrupts.handled()
    print(*wait_for_interrupt(3 * interrupts.RETRY_S))  # handled: not raised again
""")
    first, second = proc.stdout.splitlines()
    again, after = first.split()
    assert again == "SIGTERM" and 0.3 < float(after) < 0.5 + 3 * 0.2, proc.stdout
    assert second.startswith("None"), proc.stdout


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
""").stdout
    assert out.splitlines() == ["cleanup None 1", "after SIGTERM", "second held back SIGINT"], out


def test_a_cleanup_that_outlasts_the_hold_is_interrupted():
    out = _run("""
interrupts.HOLD_S, interrupts.RETRY_S = 1.0, 0.5  # read at every signal / every look
with interrupts.installed():
    try:
        with interrupts.held():
            signal.pthread_kill(MAIN, signal.SIGINT)
            print(*wait_for_interrupt(30))
    except KeyboardInterrupt:
        print("and again as it ends: not handled()")
""").stdout
    first, second = out.splitlines()
    reason, after = first.split()
    assert reason == "SIGINT" and 1.0 <= float(after) < 1.0 + 3 * 0.5, out
    assert second == "and again as it ends: not handled()"


def test_handlers_are_restored_or_ignored_and_an_inherited_ignored_sigint_stays_ignored():
    out = _run("""
before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
with interrupts.installed():
    print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN, signal.getsignal(signal.SIGTERM) is interrupts._handler)
print((signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before)
with interrupts.installed(then=signal.SIG_IGN):  # a process on its way out
    pass
print(signal.getsignal(signal.SIGTERM) is signal.SIG_IGN)
""", sigint=signal.SIG_IGN).stdout
    assert out.split() == ["True", "True", "True", "True"], out
