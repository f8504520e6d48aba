"""The library's own exceptions."""

from __future__ import annotations

__all__ = (
    "BatcherClosedError",
    "BatcherOverloadedError",
    "NoLiveReplicaError",
    "QueueTimeoutError",
    "RecordCancelledError",
    "StreamLagError",
    "closed_error",
    "queue_timeout",
    "raisable",
)


class BatcherClosedError(RuntimeError):
    """Raised by a future whose record could not be processed because the batcher
    closed abnormally (an exception or cancellation ended it)."""


class BatcherOverloadedError(Exception):
    """Raised at once, instead of waiting, by a call that would queue records past
    the batcher's ``max_queued_cost``; nothing of the call was queued. A service
    answers it with HTTP 503. A direct subclass of :exc:`Exception`: the batcher
    is running and the request may be retried later."""


class NoLiveReplicaError(RuntimeError):
    """Raised by a batch sent to model replicas (:class:`batcher.ray.RayReplicas`)
    when every replica has died and none could be restarted or replaced; the
    records of the batch fail with it."""


class QueueTimeoutError(TimeoutError):
    """Raised by a future whose record was still queued when its queue deadline
    (``max_queue_delay_s``) passed; the record never reached the process function.
    A :exc:`TimeoutError`, as a batch that runs past ``process_timeout_s`` raises."""


class RecordCancelledError(Exception):
    """Raised when awaiting a future whose record was withdrawn, by
    :meth:`BatchFuture.cancel` or by a cancelled :meth:`DynamicBatcher.call`,
    before it reached the process function."""


class StreamLagError(Exception):
    """Raised by a record's stream whose consumer let it fill up (``stream_buffer``
    items) and took none for ``stream_stall_s``: the rest of the batch went on
    without it, and its later items were dropped."""


def closed_error(cause: BaseException | None = None) -> BatcherClosedError:
    """The error that ends a future whose record the batcher could not process;
    ``cause``: the exception that ended the batcher, if one did."""
    error = BatcherClosedError("the batcher closed before this record was processed")
    error.__cause__ = cause
    return error


def queue_timeout() -> QueueTimeoutError:
    """The error that ends a future whose record outlived its queue deadline."""
    return QueueTimeoutError("the record was still queued at its deadline (max_queue_delay_s) and was not processed")


def raisable(exc: BaseException) -> BaseException:
    """``exc``, as a future or a map raises a record's exception; but a ``StopIteration``
    or ``StopAsyncIteration`` in a record's slot becomes a ``RuntimeError`` that says so,
    with ``exc`` as its cause: raised as itself from a coroutine, Python blames the
    coroutine (PEP 479), and from an async iterator's ``__anext__`` it would quietly end
    the iteration (a map or a stream would stop, as if done, without the error)."""
    if not isinstance(exc, (StopIteration, StopAsyncIteration)):
        return exc
    error = RuntimeError(f"the record failed with {exc!r}, which cannot be raised as itself here (PEP 479)")
    error.__cause__ = exc
    return error
