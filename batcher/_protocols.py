"""Protocols and type aliases shared by the batchers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, Literal, Protocol, TypeAlias, TypeVar, runtime_checkable

__all__ = (
    "CostEstimator",
    "CostEstimatorFn",
    "CostModel",
    "InferenceFn",
    "ProcessFn",
    "RecordT",
    "ResultT",
    "TokenEstimator",
    "TokenEstimatorFn",
)

RecordT = TypeVar("RecordT")
ResultT = TypeVar("ResultT")

#: ``"sum"``: a batch costs the sum of its records' costs. ``"padded"``: a batch
#: costs ``len(batch) * max(record cost)``, what a padded transformer batch computes.
CostModel: TypeAlias = Literal["sum", "padded", "measured"]

#: Takes the records of one batch, returns one result per record in the same order
#: (an ``Exception`` instance in a slot fails only that record): a list, or any
#: ordered iterable (a generator is read where the function ran). ``async def``
#: runs on the event loop; a plain function runs in a worker thread, and if it
#: returns an awaitable, that is awaited on the event loop. An async generator
#: function streams: each step yields one item per record (``_streaming.py``).
ProcessFn: TypeAlias = Callable[
    [list[RecordT]],
    Awaitable[Iterable[ResultT | Exception]] | Iterable[ResultT | Exception] | AsyncIterator[Sequence[Any]],
]
InferenceFn: TypeAlias = ProcessFn[RecordT, ResultT]

#: Returns a record's cost: a non-negative ``int``.
CostEstimatorFn: TypeAlias = Callable[[RecordT], int]
TokenEstimatorFn: TypeAlias = CostEstimatorFn[RecordT]


@runtime_checkable
class CostEstimator(Protocol):
    """A record that knows its own cost."""

    def estimate_cost(self) -> int: ...


@runtime_checkable
class TokenEstimator(Protocol):
    """A record that knows its own token count."""

    def estimate_tokens(self) -> int: ...
