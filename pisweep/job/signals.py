"""The stop signals of a job, and what each kind of process does with them.

Helper processes of a rank (DataLoader workers, shard indexers) leave stop signals to the rank itself.

SLURM sends SIGTERM (scancel, preemption) or SIGUSR2 (``--signal``) to every process of a job step, helpers
included, and a local Ctrl-C reaches a whole process group. PyTorch's DataLoader workers exit on a SIGTERM from
anyone but their parent, and the rank then fails with "DataLoader worker (pid N) is killed by signal" instead of
saving at the next step boundary. So helpers ignore SIGUSR2 and SIGINT, and a SIGTERM ends them only when their
parent sent it (multiprocessing's ``terminate()``, e.g. at interpreter exit, must still work): the rank's main
process alone decides to stop, and it shuts its helpers down itself.
"""
from __future__ import annotations

import os
import signal
import threading

#: What asks a job to save and stop: SIGUSR2 (SLURM's warning before a preemption or time limit), SIGTERM (scancel,
#: a local controller), SIGINT (Ctrl-C).
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)


def catch_stop_signals() -> list[int]:
    """Until the job context takes over, remember stop signals (a signal's default action would kill us)."""
    caught: list[int] = []
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda s, f: caught.append(s))
    return caught


def ignore_stop_signals(_worker_id: int | None = None) -> None:
    """Make this helper process deaf to stop signals from anyone but its parent.

    A DataLoader ``worker_init_fn`` or a process-pool initializer: it runs in the helper's main thread before the
    helper starts threads of its own, so every later thread inherits the blocked SIGTERM, and one thread waits
    for it with ``sigwaitinfo``, which names the sender.
    """
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A handler, not SIG_IGN (an ignored signal is dropped, never pending); a no-op should a thread that does not
    # block SIGTERM ever receive it.
    signal.signal(signal.SIGTERM, _noop)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=_end_on_parent_sigterm, args=(os.getppid(),), name="pisweep-sigterm",
                     daemon=True).start()


def _noop(_signum: int, _frame) -> None:
    return None


def _end_on_parent_sigterm(parent: int) -> None:
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == parent:
            os._exit(0)  # as PyTorch's own worker handler does for its parent's SIGTERM
