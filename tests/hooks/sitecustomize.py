"""Imported by every Python process a test starts with tests/hooks on PYTHONPATH (helpers.pause_env): with
PISWEEP_TEST_PAUSE_AT set, the process's job contexts wait at those steps (pisweep.testing.install_pause). The
environment is read here, in the tests, never by pisweep itself."""
import os

if os.environ.get("PISWEEP_TEST_PAUSE_AT"):
    from pisweep.testing import install_pause

    install_pause(os.environ["PISWEEP_TEST_PAUSE_AT"])
