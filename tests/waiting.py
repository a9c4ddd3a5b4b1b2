"""Polling helper for tests that wait on a real-time emulator."""

import time


def wait_until(predicate, timeout: float, step: float = 0.005):
    """Call ``predicate`` until it returns something true or ``timeout`` [s] passes; return
    its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)
