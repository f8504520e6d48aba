"""The process functions the workloads batch through.

Records are ints. In full mode the function is a no-op that returns its
batch; in quick mode it returns ``[r * 2 for r in batch]`` so that a result
paired with the wrong record is caught. Either way every result is checked
against :meth:`Echo.expected`. Each function also logs the shape of the
batches it sees, so every column's batch sizes come from the same place.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import anyio


class Echo:
    """No-op model: returns each record (or, with ``double``, twice it)."""

    def __init__(self, *, double: bool) -> None:
        self.double = double
        self.batches = 0
        self.records = 0

    async def process(self, batch: list[int]) -> list[int]:
        self._log(batch)
        return self._answer(batch)

    def expected(self, record: int) -> int:
        return record * 2 if self.double else record

    @property
    def avg_batch_size(self) -> float:
        return self.records / self.batches if self.batches else 0.0

    def _log(self, batch: list[int]) -> None:
        self.batches += 1
        self.records += len(batch)

    def _answer(self, batch: list[int]) -> list[int]:
        return [record * 2 for record in batch] if self.double else batch


class SimulatedLLM(Echo):
    """Sleeps ``fixed_s + per_token_s * tokens``; record ``r`` costs ``costs[r]``."""

    def __init__(
        self,
        *,
        double: bool,
        costs: Sequence[int],
        fixed_s: float,
        per_token_s: float,
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        super().__init__(double=double)
        self.tokens = 0
        self._costs = costs
        self._fixed_s = fixed_s
        self._per_token_s = per_token_s
        self._sleep = sleep

    async def process(self, batch: list[int]) -> list[int]:
        self._log(batch)
        tokens = sum(self._costs[record] for record in batch)
        self.tokens += tokens
        await self._sleep(self._fixed_s + self._per_token_s * tokens)
        return self._answer(batch)

    @property
    def avg_batch_tokens(self) -> float:
        return self.tokens / self.batches if self.batches else 0.0


class Blocked(Echo):
    """Holds every batch until :attr:`gate` is set, so records pile up queued."""

    def __init__(self, *, double: bool) -> None:
        super().__init__(double=double)
        self.gate = anyio.Event()

    async def process(self, batch: list[int]) -> list[int]:
        self._log(batch)
        await self.gate.wait()
        return self._answer(batch)
