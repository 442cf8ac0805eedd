"""Named kill points for fault-injection tests (`benchmarks/fault_injection.py`).

``GRU4REC_KILL_AT=<point>[:<n>]`` makes the process SIGKILL itself the n-th time (default 1st) it
reaches ``kill_point("<point>")`` — inside a checkpoint write, a model-directory write or a
registration — so a test can stop it exactly where a real crash would hurt most. Without the
variable a kill point does nothing (one dictionary lookup).
"""

from __future__ import annotations

import os
import signal

ENV = "GRU4REC_KILL_AT"
_hits: dict[str, int] = {}


def kill_point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
