"""The library's own exceptions."""

from __future__ import annotations

__all__ = ("BatcherClosedError", "BatcherOverloadedError", "RecordCancelledError", "closed_error")


class BatcherClosedError(RuntimeError):
    """Raised by a future whose record could not be processed because the batcher
    closed abnormally (an exception or cancellation ended it)."""


class BatcherOverloadedError(Exception):
    """Raised at once, instead of waiting, by a call that would queue records past
    the batcher's ``max_queued_cost``; nothing of the call was queued. A service
    answers it with HTTP 503. A direct subclass of :exc:`Exception`: the batcher
    is running and the request may be retried later."""


class RecordCancelledError(Exception):
    """Raised when awaiting a future whose record was withdrawn, by
    :meth:`BatchFuture.cancel` or by a cancelled :meth:`DynamicBatcher.call`,
    before it reached the process function."""


def closed_error() -> BatcherClosedError:
    """The error that ends a future whose record the batcher could not process."""
    return BatcherClosedError("the batcher closed before this record was processed")
