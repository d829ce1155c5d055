"""Imported by every Python process a test starts with tests/hooks on PYTHONPATH (helpers.pause_env): with
PISWEEP_TEST_PAUSE_AT set, the process's job contexts wait at those steps (pisweep.testing.install_pause), and
SIGUSR1 prints every thread's stack (faulthandler), so that a test which gives up on a hung process can show where
each of its processes stood. The environment is read here, in the tests, never by pisweep itself."""
import os

if os.environ.get("PISWEEP_TEST_PAUSE_AT"):
    import faulthandler
    import signal

    from pisweep.testing import install_pause

    faulthandler.register(signal.SIGUSR1, all_threads=True)
    install_pause(os.environ["PISWEEP_TEST_PAUSE_AT"])
