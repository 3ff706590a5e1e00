"""How the bridge treats a PACS that fails: pure rules, clock and randomness injected.

- **Retries** with full-jitter exponential backoff, for connection failures and 502/503 only, and only while
  the request's deadline leaves room for the wait and another attempt.
- **A circuit breaker**: after ``threshold`` consecutive failures the PACS is not asked for ``cooldown``
  seconds, and every request is answered 503 at once with ``Retry-After`` rather than queueing on a dead PACS;
  then a few requests probe (one study read asks several queries at once), and the first outcome closes or
  re-opens the breaker.
- **A deadline** per client request (``DEADLINE``, monotonic seconds), set by the web layer: each PACS request's
  timeout is the smaller of ``BRIDGE_QIDO_TIMEOUT`` and what is left.
"""

from __future__ import annotations

import contextvars
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

#: When the client request being served must be answered by (``time.monotonic()``), or None.
DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)

Clock = Callable[[], float]


def backoff(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """The wait before retry number ``attempt`` (1, 2, …): uniform in [0, min(cap, base·2^(attempt-1))]."""
    ceiling = min(cap, base * 2 ** (attempt - 1))
    return (rng or random).uniform(0, ceiling)


def remaining(clock: Clock = time.monotonic) -> float | None:
    """Seconds left before the current request's deadline, or None without one."""
    deadline = DEADLINE.get()
    return None if deadline is None else deadline - clock()


class State(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass
class CircuitBreaker:
    threshold: int = 5
    cooldown: float = 30.0
    clock: Clock = time.monotonic
    #: Requests let through at once while half-open: a study read asks the study and series queries together.
    max_probes: int = 4
    failures: int = 0
    opened_at: float = 0.0
    probing: int = 0
    state: State = field(default=State.CLOSED)

    def allow(self) -> bool:
        """Whether a request may go to the PACS now (half-open: up to ``max_probes`` at a time)."""
        if self.state is State.OPEN and self.clock() - self.opened_at >= self.cooldown:
            self.state = State.HALF_OPEN
            self.probing = 0
        if self.state is State.CLOSED:
            return True
        if self.state is State.HALF_OPEN and self.probing < self.max_probes:
            self.probing += 1
            return True
        return False

    def retry_after(self) -> int:
        """Whole seconds until the breaker lets a probe through."""
        if self.state is not State.OPEN:
            return 1
        return max(1, int(self.cooldown - (self.clock() - self.opened_at) + 0.999))

    def succeeded(self) -> None:
        self.failures = 0
        self.probing = 0
        self.state = State.CLOSED

    def abandoned(self) -> None:
        """The request was cancelled (its client left): it proved nothing, and must not hold a probe."""
        if self.state is State.HALF_OPEN:
            self.probing = max(0, self.probing - 1)

    def failed(self) -> None:
        self.failures += 1
        self.probing = 0
        if self.state is State.HALF_OPEN or self.failures >= self.threshold:
            self.state = State.OPEN
            self.opened_at = self.clock()
