"""TokenBatcher: DynamicBatcher in the words of LLM inference, and Prompt."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ._dynamic import DynamicBatcher
from ._future import BatchFuture
from ._protocols import CostEstimatorFn, CostModel, ProcessFn, RecordT, ResultT

__all__ = ("Prompt", "TokenBatcher")


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

    _explicit_name = "estimated_tokens"
    _cost_methods = ("estimate_tokens", "estimate_cost")

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
        fn = inference_fn if inference_fn is not None else process_fn
        if fn is None:
            raise TypeError("TokenBatcher requires either inference_fn or process_fn")
        # Error messages name the parameter the caller actually used.
        self._estimator_name = "token_estimator" if token_estimator is not None else "cost_estimator"
        self._target_name = "target_batch_tokens" if target_batch_tokens is not None else "target_batch_cost"
        self._default_name = "default_token_estimate" if default_token_estimate is not None else "default_cost"
        super().__init__(
            fn,
            cost_estimator=token_estimator if token_estimator is not None else cost_estimator,
            target_batch_cost=target_batch_tokens if target_batch_tokens is not None else target_batch_cost,
            max_batch_size=max_batch_size,
            min_batch_size=min_batch_size,
            batch_timeout_s=batch_timeout_s,
            max_queue_size=max_queue_size,
            prefetch_batches=prefetch_batches,
            default_cost=default_token_estimate if default_token_estimate is not None else default_cost,
            eager_dispatch=eager_dispatch,
            max_concurrent_batches=max_concurrent_batches,
            cost_model=cost_model,
            group_by_cost=group_by_cost,
            process_timeout_s=process_timeout_s,
        )

    async def submit(
        self, record: RecordT, *, estimated_tokens: int | None = None, estimated_cost: int | None = None
    ) -> BatchFuture[ResultT]:
        """Queue one record and return its future; see :meth:`DynamicBatcher.submit`."""
        return await self._enqueue(self._new_future(record, *_explicit(estimated_tokens, estimated_cost)))

    def submit_nowait(
        self, record: RecordT, *, estimated_tokens: int | None = None, estimated_cost: int | None = None
    ) -> BatchFuture[ResultT]:
        """Like :meth:`submit`, without waiting.

        :raises anyio.WouldBlock: if the submission stream is full
        """
        future = self._new_future(record, *_explicit(estimated_tokens, estimated_cost))
        self._enqueue_nowait(future)
        return future

    async def submit_batch(
        self,
        records: Iterable[RecordT],
        *,
        estimated_tokens: Sequence[int] | None = None,
        estimated_cost: Sequence[int] | None = None,
    ) -> list[BatchFuture[ResultT]]:
        """Queue many records; see :meth:`DynamicBatcher.submit_batch`."""
        if estimated_tokens is not None:
            return await self._submit_many(records, estimated_tokens, "estimated_tokens")
        return await self._submit_many(records, estimated_cost, "estimated_cost")

    async def call(
        self, record: RecordT, *, estimated_tokens: int | None = None, estimated_cost: int | None = None
    ) -> ResultT:
        """Submit one record and wait for its result; see :meth:`DynamicBatcher.call`."""
        return await self._call(self._new_future(record, *_explicit(estimated_tokens, estimated_cost)))


def _explicit(tokens: int | None, cost: int | None) -> tuple[Any, str]:
    if tokens is not None:
        return tokens, "estimated_tokens"
    return cost, "estimated_cost"
