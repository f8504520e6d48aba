"""TokenBatcher: DynamicBatcher in the words of LLM inference, and Prompt."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import anyio

from ._dynamic import DynamicBatcher
from ._future import BatchFuture
from ._pricing import Pricing
from ._protocols import CostEstimatorFn, CostModel, ProcessFn, RecordT, ResultT
from ._settings import Settings, check_callable

__all__ = ("Prompt", "TokenBatcher")

T = TypeVar("T")
U = TypeVar("U")


@dataclass(slots=True)
class Prompt:
    """A text prompt that estimates its own token count (about 4 characters a token)."""

    text: str

    def estimate_tokens(self) -> int:
        return len(self.text) // 4 + 1


class TokenBatcher(DynamicBatcher[RecordT, ResultT]):
    """A :class:`DynamicBatcher` whose costs are tokens.

    Token names map onto the base parameters: ``inference_fn`` (or else
    ``process_fn``), ``token_estimator`` (or else ``cost_estimator``),
    ``target_batch_tokens`` (over ``target_batch_cost``), ``default_token_estimate``
    (over ``default_cost``). A record's tokens are, first that applies: explicit
    ``estimated_tokens``, explicit ``estimated_cost``, the estimator function,
    ``record.estimate_tokens()``, ``record.estimate_cost()``, the default.
    """

    def __init__(
        self,
        inference_fn: ProcessFn[RecordT, ResultT] | None = None,
        *,
        process_fn: ProcessFn[RecordT, ResultT] | None = None,
        token_estimator: CostEstimatorFn[RecordT] | None = None,
        cost_estimator: CostEstimatorFn[RecordT] | None = None,
        target_batch_tokens: int | None = None,
        target_batch_cost: int = 32_000,
        default_token_estimate: int | None = None,
        default_cost: int = 1,
        max_batch_size: int = 256,
        min_batch_size: int = 1,
        batch_timeout_s: float = 0.05,
        max_queue_size: int = 5_000,
        prefetch_batches: int = 2,
        eager_dispatch: bool = True,
        max_concurrent_batches: int = 1,
        cost_model: CostModel = "sum",
        group_by_cost: bool = False,
        process_timeout_s: float | None = None,
    ) -> None:
        fn_name, fn = either("inference_fn", inference_fn, "process_fn", process_fn)
        if fn is None:
            raise TypeError("TokenBatcher requires either inference_fn or process_fn")
        target_name, target = either("target_batch_tokens", target_batch_tokens, "target_batch_cost", target_batch_cost)
        # DynamicBatcher.__init__ would name costs; build the same parts in tokens.
        self._setup(
            check_callable(fn_name, fn),
            Pricing(
                either("token_estimator", token_estimator, "cost_estimator", cost_estimator),
                either("default_token_estimate", default_token_estimate, "default_cost", default_cost),
                ("estimate_tokens", "estimate_cost"),
            ),
            Settings(
                target_batch_cost=target,
                target_name=target_name,
                max_batch_size=max_batch_size,
                min_batch_size=min_batch_size,
                batch_timeout_s=batch_timeout_s,
                max_queue_size=max_queue_size,
                prefetch_batches=prefetch_batches,
                eager_dispatch=eager_dispatch,
                max_concurrent_batches=max_concurrent_batches,
                cost_model=cost_model,
                group_by_cost=group_by_cost,
                process_timeout_s=process_timeout_s,
            ),
        )

    async def submit(
        self, record: RecordT, *, estimated_tokens: int | None = None, estimated_cost: int | None = None
    ) -> BatchFuture[ResultT]:
        """Queue one record and return its future; see :meth:`DynamicBatcher.submit`."""
        name, cost = either("estimated_tokens", estimated_tokens, "estimated_cost", estimated_cost)
        future = self._new_future(record, cost, name)
        if not self._try_enqueue(future):
            await self._enqueue_waiting(future)
        return future

    def submit_nowait(
        self, record: RecordT, *, estimated_tokens: int | None = None, estimated_cost: int | None = None
    ) -> BatchFuture[ResultT]:
        """Like :meth:`submit`, without waiting.

        :raises anyio.WouldBlock: if the submission stream is full
        """
        name, cost = either("estimated_tokens", estimated_tokens, "estimated_cost", estimated_cost)
        future = self._new_future(record, cost, name)
        if not self._try_enqueue(future):
            raise anyio.WouldBlock
        return future

    async def submit_batch(
        self,
        records: Iterable[RecordT],
        *,
        estimated_tokens: Sequence[int] | None = None,
        estimated_cost: Sequence[int] | None = None,
    ) -> list[BatchFuture[ResultT]]:
        """Queue many records; see :meth:`DynamicBatcher.submit_batch`."""
        name, costs = either("estimated_tokens", estimated_tokens, "estimated_cost", estimated_cost)
        return await self._submit_all(records, costs, name)

    async def call(
        self, record: RecordT, *, estimated_tokens: int | None = None, estimated_cost: int | None = None
    ) -> ResultT:
        """Submit one record and wait for its result; see :meth:`DynamicBatcher.call`."""
        name, cost = either("estimated_tokens", estimated_tokens, "estimated_cost", estimated_cost)
        return await self._call(self._new_future(record, cost, name))


def either(name: str, value: T | None, fallback_name: str, fallback: U) -> tuple[str, T | U]:
    """TokenBatcher's rule for a pair of synonyms: the token-named argument if it
    was given, else the cost-named one; with the name that error messages use."""
    if value is not None:
        return name, value
    return fallback_name, fallback
