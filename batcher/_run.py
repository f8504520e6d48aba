"""One run of a batcher's loops, from ``start()`` (or ``serve()``) until they
have ended: the loops themselves (the aggregator and the workers, children of
one task group) and their shared state: the two streams, the thread limiter,
the loops' cancel scope, the free-worker count and the fatal exception, if any."""

from __future__ import annotations

import anyio
from anyio.abc import TaskGroup, TaskStatus

from ._aggregator import WAKE_UP, Aggregator, Submission
from ._exceptions import closed_error
from ._future import Batch, fail_queued
from ._model import Model
from ._settings import Settings
from ._stats import Counters
from ._worker import Worker

__all__ = ("Run",)


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
        "settings",
        "stopped",
        "submit_receive",
        "submit_send",
    )

    def __init__(self, settings: Settings, owner: TaskGroup | None) -> None:
        self.settings = settings
        self.submit_send, self.submit_receive = anyio.create_memory_object_stream[Submission](settings.max_queue_size)
        self.batch_send, self.batch_receive = anyio.create_memory_object_stream[Batch](settings.prefetch_batches)
        #: Threads for a plain process function without a time limit, one per concurrent batch.
        self.limiter = anyio.CapacityLimiter(settings.max_concurrent_batches)
        #: Set once the loops have ended and every future they held has ended.
        self.stopped = anyio.Event()
        #: Encloses the loops; cancelled to end them at once.
        self.scope = anyio.CancelScope()
        #: The task group ``start()`` opened to run the loops in (``None`` under ``serve()``).
        self.owner = owner
        #: A ``BaseException`` (not cancellation) from the process function, which
        #: ended the loops; ``stop()`` re-raises it.
        self.fatal: BaseException | None = None
        # Workers waiting for a batch, less the batches already on their way to them.
        self._free_workers = 0

    async def serve(self, model: Model, counters: Counters, *, task_status: TaskStatus[None]) -> None:
        """Run the aggregator and the workers until input has ended and every batch
        has run, or until cancelled; then fail what is left and close the streams."""
        try:
            with self.scope:
                async with anyio.create_task_group() as loops:
                    await loops.start(Aggregator(self, counters).run)
                    for _ in range(self.settings.max_concurrent_batches):
                        await loops.start(Worker(self, model, counters).run)
                    task_status.started()
        finally:
            # A batch the aggregator closed as the workers were cancelled.
            fail_queued(self.batch_receive, closed_error(), counters)
            self.close_streams()

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
