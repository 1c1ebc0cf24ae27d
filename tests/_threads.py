"""Running loops in racing threads, for tests of what threads sharing one module may do."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable


def race(loop: Callable[[int], object], n: int = 2, timeout: float = 60.0) -> list:
    """``[loop(0), ..., loop(n - 1)]``, each in a thread of its own, started together, with the
    interpreter switching threads as often as it can (races show); an exception in any thread is
    raised here."""
    got, errors = [None] * n, []
    barrier = threading.Barrier(n)

    def run(k):
        try:
            barrier.wait()
            got[k] = loop(k)
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout)
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors
    return got
