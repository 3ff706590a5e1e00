"""What one client request may cost the PACS: a number of requests and a number of rows, across every level.

A search's cost depends on its parameters (OR lists fan out, series- and instance-level criteria query those
levels, a criterion the PACS cannot narrow reads every study row), so each search runs under a ``Budget``. The
QIDO source charges it before each request and for every row it reads, and asks no more rows of the PACS than
the budget has left (plus one, to see that it would be exceeded). Running out is a ``BudgetExceeded``: the search
says what to narrow rather than ask on.

The budget lives in a context variable, like the request's deadline: the tasks a search starts share it, and
nothing has to pass it along.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

from bridge.errors import TooCostly


class BudgetExceeded(TooCostly):
    """The request would cost the PACS more than its budget; the message says which part ran out."""


@dataclass
class Budget:
    """Requests and rows left for one client request."""

    queries: int
    rows: int

    def spend_query(self, where: str) -> None:
        if self.queries <= 0:
            raise BudgetExceeded(f"it needs more PACS requests than a search may make (at {where})")
        self.queries -= 1

    def spend_rows(self, count: int, where: str) -> None:
        self.rows -= count
        if self.rows < 0:
            raise BudgetExceeded(f"it matches more rows at the PACS than a search may read (at {where})")

    def limit(self, asked: int | None) -> int | None:
        """The ``limit`` to send: no more than asked, and one row past what is left (to see it run out)."""
        within = self.rows + 1
        return within if asked is None else min(asked, within)


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
