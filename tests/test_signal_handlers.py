"""Stop-signal handlers must survive a signal that arrives while they run.

A Python signal handler can run inside another one. SLURM sends SIGTERM to every process of a job while the node
launcher forwards its own SIGTERM to the ranks, so a rank gets two within milliseconds; a handler that takes a lock
(threading.Event.set) then waits forever for the lock its outer run holds, and the job hangs instead of saving
(seen once in CI: the preemption acceptance test's launcher never ended). Each handler here is hammered with bursts
of two signals in a real process; the process must end on time, with the request recorded.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

CHILD = {
    "job context": """
from pathlib import Path
from pisweep.job.context import JobContext
ctx = JobContext(uid="u", folder=Path("."), attempt={})
ctx.install_signal_handlers()
stopped = ctx.should_stop
""",
    "launcher's forwarder": """
from pisweep.runner.launch import SignalForwarder
forwarder = SignalForwarder()
ctx = forwarder.installed()
ctx.__enter__()
stopped = lambda: forwarder.received is not None
""",
}
LOOP = """
import sys, time
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    pass
print("stopped" if stopped() else "not stopped", flush=True)
"""


@pytest.mark.parametrize("handler", sorted(CHILD))
def test_bursts_of_two_stop_signals_never_hang_a_handler(handler):
    run_s, burst_s = 3.0, 2.0
    proc = subprocess.Popen([sys.executable, "-c", CHILD[handler] + LOOP, str(run_s)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        end, sent = time.monotonic() + burst_s, 0
        while time.monotonic() < end and proc.poll() is None:
            for sig in (signal.SIGTERM, signal.SIGTERM if sent % 4 else signal.SIGUSR2):
                os.kill(proc.pid, sig)
                sent += 1
            time.sleep(0.0005)
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"the {handler}'s process hung after {sent} stop signals (a handler waits on a lock)")
    assert sent > 1000, "too few bursts to exercise nested handlers"
    assert proc.returncode == 0, err[-3000:]
    assert out.strip() == "stopped", err[-3000:]
