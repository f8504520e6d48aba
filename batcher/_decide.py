"""What the aggregator does next: close a batch, yield, take in a backlog, wait,
or finish. One pure rule, :func:`next_step`, with no awaits, so it can be tested
without an event loop; the aggregator gathers its inputs and does what it says."""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

__all__ = ("CLOSE", "FINISH", "PULL", "YIELD", "Action", "Step", "next_step")


class Action(Enum):
    """What the aggregator does next (see :func:`next_step`)."""

    CLOSE = "close"  #: close the next batch now and send it to the workers
    YIELD = "yield"  #: let runnable producers add their records first, then decide again
    PULL = "pull"  #: take in more of a backlog after a checkpoint, then decide again
    WAIT = "wait"  #: wait for a record, at most ``Step.delay`` seconds (``None``: no deadline)
    FINISH = "finish"  #: input has ended and nothing is queued: the aggregator is done


class Step(NamedTuple):
    action: Action
    delay: float | None = None


CLOSE = Step(Action.CLOSE)
YIELD = Step(Action.YIELD)
PULL = Step(Action.PULL)
FINISH = Step(Action.FINISH)
WAIT_FOREVER = Step(Action.WAIT)


def next_step(
    *,
    queued: int,
    full: bool,
    ended: bool,
    worker_free: bool,
    eager: bool,
    min_batch_size: int,
    waited_s: float,
    batch_timeout_s: float,
    yielded: bool,
    waited_for_worker: bool,
    backlog: bool = False,
) -> Step:
    """Decide what the aggregator does next with the ``queued`` records.

    - A full batch closes at once (it may then wait in the batch stream), and so
      does everything at the end of input.
    - Late binding: a batch that is not full closes only when a worker is free;
      until then it keeps growing (``WAIT`` with no deadline).
    - With ``eager`` a free worker takes what is queued, if at least
      ``min_batch_size`` records are; otherwise the batch waits up to
      ``batch_timeout_s`` after its first record arrived (``waited_s`` ago).
    - While records already submitted wait beyond the last intake (``backlog``),
      the aggregator takes them in first, a chunk a turn, so a batch chooses from
      all of them and the event loop never stalls on a long intake.
    - Before an eager close the aggregator yields once, so that producers that
      are already runnable add theirs to the batch, unless it has ``yielded``
      for this batch already or the batch ``waited_for_worker``: it grew while
      every worker was busy, and the freed worker should not wait any longer.
    """
    if not queued:
        return FINISH if ended else WAIT_FOREVER
    if full or ended:
        return CLOSE
    if backlog:
        return PULL
    if not worker_free:
        return WAIT_FOREVER
    return _for_a_free_worker(queued, eager, min_batch_size, batch_timeout_s - waited_s, yielded or waited_for_worker)


def _for_a_free_worker(queued: int, eager: bool, min_batch_size: int, remaining_s: float, settled: bool) -> Step:
    # A worker is free for a batch that is not full.
    if not eager:
        return _unless_waiting(remaining_s, CLOSE)
    close = CLOSE if settled else YIELD
    return close if queued >= min_batch_size else _unless_waiting(remaining_s, close)


def _unless_waiting(remaining_s: float, step: Step) -> Step:
    # The batch waits out the rest of its timeout for more records, then ``step``.
    return Step(Action.WAIT, remaining_s) if remaining_s > 0 else step
