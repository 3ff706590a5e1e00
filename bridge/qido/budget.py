"""What one client request may cost the PACS: a number of requests and a number of rows, across every level.

A search's cost depends on its parameters (OR lists fan out, series- and instance-level criteria query those
levels, a criterion the PACS cannot narrow reads every study row), so each search runs under a ``Budget``. The
QIDO source charges it before each request and for every row it reads, and asks no more rows of the PACS than
the budget has left (plus one, to see that it would be exceeded), divided between the lists asked at once
(``sharing``). Running out is a ``BudgetExceeded``: the search says what to narrow rather than ask on.

The budget lives in a context variable, like the request's deadline: the tasks a search starts share it, and
nothing has to pass it along.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

from bridge.errors import BudgetExceeded


@dataclass
class Budget:
    """Requests and rows left for one client request."""

    queries: int
    rows: int
    #: Rows the requests in flight may still bring (their ``limit``s), not yet charged.
    reserved: int = 0
    #: Requests asked at once (``sharing``), between which the rows left are divided.
    share: int = 1

    def spend_query(self, where: str) -> None:
        if self.queries <= 0:
            raise BudgetExceeded(f"it needs more PACS requests than a search may make (at {where})")
        self.queries -= 1

    def reserve(self, asked: int | None) -> int:
        """The ``limit`` to send: no more than asked, nor than this request's share of the rows that are neither
        charged nor reserved, plus one (to see them run out). Give it back with ``release``."""
        granted = max(1, (self.rows - self.reserved) // self.share + 1)
        if asked:
            granted = min(granted, asked)
        self.reserved += granted
        return granted

    def release(self, granted: int) -> None:
        self.reserved -= granted

    def spend_rows(self, count: int, where: str) -> None:
        self.rows -= count
        if self.rows < 0:
            raise BudgetExceeded(f"it matches more rows at the PACS than a search may read (at {where})")


BUDGET: ContextVar[Budget | None] = ContextVar("pacs_budget", default=None)


def current() -> Budget | None:
    return BUDGET.get()


@contextlib.contextmanager
def spending(budget: Budget) -> Iterator[Budget]:
    """Run the block (and the tasks it starts) under ``budget``."""
    token = BUDGET.set(budget)
    try:
        yield budget
    finally:
        BUDGET.reset(token)


@contextlib.contextmanager
def sharing(requests: int) -> Iterator[None]:
    """The block asks ``requests`` lists at once: they divide the rows left between them, rather than the first
    one asked taking them all."""
    budget = BUDGET.get()
    if budget is None:
        yield
        return
    before, budget.share = budget.share, max(1, requests)
    try:
        yield
    finally:
        budget.share = before
