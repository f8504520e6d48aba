"""The state of one run of a batcher's loops, from ``start()`` (or ``serve()``)
until the loops have ended: the two streams, the thread limiter, the loops'
cancel scope, the free-worker count and the fatal exception, if any."""

from __future__ import annotations

from enum import Enum
from typing import Any, Final, Literal, TypeAlias

import anyio
from anyio.abc import TaskGroup

from ._future import BatchFuture
from ._settings import Settings

__all__ = ("WAKE_UP", "Run", "Submission")


class _WakeUp(Enum):
    WAKE_UP = "wake up"


#: The message a worker that has just become free sends into the submission
#: stream, so that the aggregator, asleep until a record arrives, looks again.
WAKE_UP: Final = _WakeUp.WAKE_UP

#: What the submission stream carries: a record's future, or the wake-up.
Submission: TypeAlias = BatchFuture[Any] | Literal[_WakeUp.WAKE_UP]
Batch: TypeAlias = list[BatchFuture[Any]]


class Run:
    """One run's state, made when the batcher starts and dropped when it stops.

    The submission stream carries futures from ``submit`` to the aggregator, the
    batch stream closed batches from the aggregator to the workers.
    """

    __slots__ = (
        "_free_workers",
        "batch_receive",
        "batch_send",
        "fatal",
        "limiter",
        "owner",
        "scope",
        "stopped",
        "submit_receive",
        "submit_send",
    )

    def __init__(self, settings: Settings, owner: TaskGroup | None) -> None:
        self.submit_send, self.submit_receive = anyio.create_memory_object_stream[Submission](settings.max_queue_size)
        self.batch_send, self.batch_receive = anyio.create_memory_object_stream[Batch](settings.prefetch_batches)
        #: Set once the loops have ended and every future they held has ended.
        self.stopped = anyio.Event()
        #: Threads for a plain (sync) process function: one per concurrent batch.
        self.limiter = anyio.CapacityLimiter(settings.max_concurrent_batches)
        #: Encloses the loops; cancelled to end them at once.
        self.scope = anyio.CancelScope()
        #: The task group ``start()`` opened to run the loops in (``None`` under ``serve()``).
        self.owner = owner
        #: A ``BaseException`` (not cancellation) from the process function, which
        #: ended the loops; ``stop()`` re-raises it.
        self.fatal: BaseException | None = None
        # Workers waiting for a batch, less the batches already on their way to them.
        self._free_workers = 0

    def close_streams(self) -> None:
        """Close every stream end the run made (each loop closes its own as well)."""
        for stream in (self.submit_send, self.submit_receive, self.batch_send, self.batch_receive):
            stream.close()

    # ----------------------------------------------------- free-worker count

    @property
    def worker_free(self) -> bool:
        """Whether a worker is waiting for a batch that nobody has sent it yet."""
        return self._free_workers > 0

    def worker_ready(self) -> None:
        """A worker waits for its next batch; wake the aggregator if it was the only one."""
        self._free_workers += 1
        if self._free_workers == 1:
            try:
                self.submit_send.send_nowait(WAKE_UP)
            except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass  # the aggregator has records to pull, or input has ended: it is awake

    def batch_sent(self) -> None:
        """The aggregator has sent a batch to the (possibly busy) workers."""
        self._free_workers -= 1

    def end_fatally(self, exc: BaseException) -> None:
        """Keep ``exc`` for ``stop()`` and cancel the loops."""
        self.fatal = exc
        self.scope.cancel()
