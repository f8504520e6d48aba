"""Process functions that record what they saw and can hold a batch in flight."""

from __future__ import annotations

from typing import Any

import anyio


class Recorder:
    """An async process function that records each batch and, while ``hold`` is set,
    parks inside the call until :meth:`release`, so tests can keep a worker busy."""

    def __init__(self, *, hold: bool = False) -> None:
        self.batches: list[list[Any]] = []
        self.hold = hold
        self.entered = anyio.Event()
        self._gate = anyio.Event()

    async def __call__(self, batch: list[Any]) -> list[Any]:
        self.batches.append(list(batch))
        self.entered.set()
        if self.hold:
            await self._gate.wait()
        return [("done", record) for record in batch]

    def release(self) -> None:
        self.hold = False
        self._gate.set()

    @property
    def records(self) -> list[Any]:
        return [record for batch in self.batches for record in batch]
