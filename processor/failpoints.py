"""Failpoints: named places where a fault-injection test makes this process crash.

Off unless the environment variable WARREN_FAILPOINTS names some, as `name=probability` pairs
separated by commas, e.g. `WARREN_FAILPOINTS=after_commit=0.05,before_ack=0.02`. Each time the
engine passes an active failpoint it draws from a random sequence seeded by
WARREN_FAILPOINT_SEED; on a hit it writes `failpoint NAME` to stderr and kills its own process
with SIGKILL, as a power cut would: no finally blocks, no flushing, no goodbye to the broker.
"""

from __future__ import annotations

import os
import random
import signal
import sys

#: Where each one is, in the order a message's life passes them.
FAILPOINTS = {
    "before_commit": "a transaction's statements are done; the commit is not (runtime.py)",
    "after_commit": "committed, its outbox messages not yet published (runtime.py)",
    "after_publish": "outbox messages published, their rows not yet deleted (runtime.py)",
    "before_ack": "a message's effects committed and published, the message not acked",
    "mid_step": "a step body returned, its report not published (engine/rounds.py)",
    "duplicate_publish": "not a crash: every run message is published twice (broker/publisher.py)",
}


def _parse(spec: str) -> dict[str, float]:
    active = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, probability = item.partition("=")
        if name not in FAILPOINTS:
            raise ValueError(
                f"WARREN_FAILPOINTS: unknown failpoint {name!r}; known: {sorted(FAILPOINTS)}"
            )
        active[name] = float(probability or 1.0)
    return active


_active = _parse(os.environ.get("WARREN_FAILPOINTS", ""))
_random = random.Random(os.environ.get("WARREN_FAILPOINT_SEED"))


def hits(name: str) -> bool:
    """Whether the failpoint `name` fires this time (always False when it is not active)."""
    probability = _active.get(name)
    return probability is not None and _random.random() < probability


def crash_point(name: str) -> None:
    """Kill this process here if the failpoint `name` fires."""
    if hits(name):
        sys.stderr.write(f"failpoint {name}\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
