"""The submission side of a run: how a record enters the submission stream.

``submit`` sends a record's future into the stream if it has room; otherwise
the caller waits behind it in the overflow (``call()`` waits for the result
instead). Callers whose records have left the overflow are woken by the next
worker's hand-over (``Worker._handover``), between two crowds of results, or
at once when the aggregator has nothing else to do. Load shedding
(``max_queued_cost``) refuses records before anything is queued, and a record
with a queue deadline is handed to the run's
:class:`~batcher._deadlines.Deadlines` once it is queued.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from threading import get_ident
from time import monotonic
from typing import Any

import anyio
from anyio.lowlevel import checkpoint

from ._aggregator import INTAKE, Submission
from ._deadlines import Deadlines
from ._events import records_dropped
from ._exceptions import BatcherOverloadedError
from ._future import BatchFuture, make_event
from ._model_call import own_call
from ._settings import Settings
from ._stats import Counters
from ._transitions import fail, time_queued

__all__ = ("COHORT", "NOT_RUNNING", "OTHER_THREAD", "Intake")

#: How many ``submit()`` callers parked behind a full stream share one event.
COHORT = 64

NOT_RUNNING = "batcher is not running; use 'async with batcher:' or start()"
ENDED = (
    "the batcher was ended by {!r} from its process function (or an observer or done-callback); "
    "stop() it (stop() raises that again) to start it again"
)
OTHER_THREAD = (
    "batcher was called from a thread other than its event loop's; from other threads use SyncBatcher, "
    "or anyio.from_thread.run(batcher.call, record, token=...) with the token of the loop that started it"
)


class Intake:
    """The submission stream's sending side, and the records queued behind it."""

    __slots__ = (
        "_cohort",
        "_due",
        "_input_ended",
        "_newest",
        "_own",
        "_reserved",
        "_room",
        "_shed_above",
        "counters",
        "deadlines",
        "default_delay",
        "fatal",
        "overflow",
        "settings",
        "submit_receive",
        "submit_send",
        "thread",
    )

    def __init__(self, settings: Settings, counters: Counters) -> None:
        #: The settings in force (``configure()`` replaces them, through :meth:`apply`).
        self.settings = settings
        self._shed_above = settings.max_queued_cost  # read once per record: kept at hand
        #: The queue deadline of a record that has none of its own.
        self.default_delay = settings.max_queue_delay_s
        self.counters = counters
        #: The thread of the event loop the run belongs to.
        self.thread = counters.thread = get_ident()
        self.submit_send, self.submit_receive = anyio.create_memory_object_stream[Submission](settings.max_queue_size)
        #: The queue deadlines of the records that have one.
        self.deadlines = Deadlines(counters)
        #: Records submitted while the submission stream was full, oldest first: the
        #: aggregator takes them after the stream's. A caller parked here costs a
        #: slot in a deque, not a blocked send (an event and two more wake-ups).
        self.overflow: deque[BatchFuture[Any]] = deque()
        #: A ``BaseException`` (not cancellation) from the process function, which
        #: ended the run: ``stop()`` re-raises it, and records are refused naming it.
        self.fatal: BaseException | None = None
        #: The events ``submit()`` callers wait on for their records to leave the
        #: overflow, each shared by up to ``COHORT`` consecutive callers and keyed by
        #: the newest one's record: it is set when that record leaves, the others
        #: having left before it.
        self._room: dict[BatchFuture[Any], anyio.Event] = {}
        self._newest: BatchFuture[Any] | None = None  # the key of the cohort still open
        self._cohort = 0  # how many callers share it
        #: The events of cohorts whose records have all left the overflow, not yet set
        #: (:meth:`wake_rooms`), and how many callers wait on them.
        self._due: list[tuple[anyio.Event, int]] = []
        #: The events of ``submit()`` callers inside the process function, each its own,
        #: set as soon as their record leaves the overflow (:meth:`_own_room`).
        self._own: dict[BatchFuture[Any], anyio.Event] = {}
        self._input_ended = False
        self._reserved = 0  # queued cost promised to a submit_batch() still sending

    def try_submit(self, future: BatchFuture[Any], delay: float | None = None, *, admitted: bool = False) -> bool:
        """Send ``future`` into the submission stream if it has room; return whether it
        did. Unless ``admitted`` (with others, by :meth:`submit_all`), apply ``admit``.
        Its queue deadline is ``delay`` seconds from now (``None``: the setting's).

        :raises RuntimeError: if called from another thread, or once input has ended
        """
        if self.thread != get_ident():  # check_thread(), written out: once per record
            raise RuntimeError(OTHER_THREAD)
        if self._shed_above is not None and not admitted:
            self.admit(future._cost)
        if self.overflow:  # callers wait already: nobody passes them
            return self._behind_others()
        try:
            self.submit_send.send_nowait(future)
        except anyio.WouldBlock:
            return False
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise RuntimeError(self.refusal()) from self.fatal
        counters = self.counters
        counters.submitted += 1
        counters.queued_cost += future._cost
        if counters.timed is None:  # one record at a time is timed to dispatch (every one while observed)
            time_queued(future, monotonic())
        if delay is None:  # _add_deadlines(), written out: once per record
            delay = self.default_delay
        if delay is not None:
            self.deadlines.add(future, delay)
        return True

    def _behind_others(self) -> bool:
        # try_submit() while callers wait behind the full stream: no room for this one.
        if self._input_ended:
            raise RuntimeError(self.refusal()) from self.fatal
        return False

    def apply(self, settings: Settings) -> None:
        """Put new settings in force for the records that come from now on."""
        self.settings = settings
        self._shed_above = settings.max_queued_cost
        self.default_delay = settings.max_queue_delay_s

    def check_thread(self) -> None:
        """:raises RuntimeError: if called from a thread other than the run's event loop's"""
        if self.thread != get_ident():
            raise RuntimeError(OTHER_THREAD)

    def admit(self, cost: int, records: int = 1) -> None:
        """Refuse records of this total cost if they would take the queued cost past
        ``max_queued_cost`` (load shedding): nothing is queued, nothing waits.

        :raises BatcherOverloadedError: if they would (:exc:`RuntimeError` once input has ended)
        """
        limit, counters = self.settings.max_queued_cost, self.counters
        if limit is None or counters.queued_cost + self._reserved + cost <= limit:
            return
        if self._input_ended:
            raise RuntimeError(self.refusal()) from self.fatal
        counters.shed += records
        if counters.observe is not None:
            records_dropped(counters.observe, counters, "shed", records, cost)
        if cost > limit:
            raise BatcherOverloadedError(
                f"a call costing {cost} can never be queued under max_queued_cost={limit}: it is refused "
                "whatever the load, so a retry fails too"
            )
        raise BatcherOverloadedError(
            f"the batcher is overloaded: {counters.queued_cost + self._reserved} of max_queued_cost={limit} "
            f"is queued or on its way, and {cost} more would not fit; try again later"
        )

    def queue_behind(self, future: BatchFuture[Any], delay: float | None = None) -> None:
        """Queue ``future`` behind the full submission stream, for a caller that
        waits for the result anyway (``call()``): it waits once, for the result."""
        if self._input_ended:
            raise RuntimeError(self.refusal()) from self.fatal
        self.overflow.append(future)
        counters = self.counters
        counters.submitted += 1
        counters.queued_cost += future._cost
        if counters.timed is None:
            time_queued(future, monotonic())
        self._add_deadlines((future,), delay)

    async def submit(self, future: BatchFuture[Any], delay: float | None = None) -> None:
        """Queue ``future`` behind the full submission stream and wait until the
        aggregator has taken it and a worker or the aggregator wakes the caller
        (:meth:`wake_rooms`). If the caller is cancelled meanwhile, the record is
        withdrawn; if the batcher stops abnormally, the future fails."""
        self.queue_behind(future, delay)
        make_event(future)
        call = own_call(self.counters)
        if call is None:
            room = self._join_cohort(future)
        elif call.begin_wait(refuse=False):
            room = self._own_room(future)
        else:  # every other worker waits for this batcher too: no room comes before it returns
            return
        try:
            await room.wait()
        except BaseException:
            future.cancel()  # it stays in the overflow until taken, so its cohort is woken
            raise
        finally:
            if call is not None:
                call.end_wait()

    def _join_cohort(self, future: BatchFuture[Any]) -> anyio.Event:
        # One event per COHORT callers, not one each: a parked caller then costs
        # its task and a slot here, not an event with its waiter queue.
        newest = self._newest
        room = self._room.pop(newest, None) if newest is not None and self._cohort < COHORT else None
        if room is None:
            room, self._cohort = anyio.Event(), 0
        self._room[future] = room
        self._newest = future
        self._cohort += 1
        return room

    def _own_room(self, future: BatchFuture[Any]) -> anyio.Event:
        # A caller inside the process function holds a worker: no hand-over comes
        # until it returns, so it is woken as soon as its record leaves the overflow.
        room = self._own[future] = anyio.Event()
        return room

    def wake_rooms(self) -> int:
        """Set the events of the cohorts whose records have all left the overflow;
        return how many callers that wakes. The workers call it at each hand-over
        and before they wait for a batch, the aggregator before it waits for a record."""
        due = self._due
        if not due:
            return 0
        woken = 0
        for room, callers in due:
            room.set()
            woken += callers
        due.clear()
        return woken

    def from_overflow(self) -> BatchFuture[Any] | None:
        """The oldest record queued behind the stream, or ``None``: for the aggregator."""
        if not self.overflow:
            return None
        future = self.overflow.popleft()
        if self._own and (own := self._own.pop(future, None)) is not None:
            own.set()
        room = self._room.pop(future, None)
        if room is not None:  # the newest of its cohort: all of them have left
            if future is self._newest:
                self._newest = None
                self._due.append((room, self._cohort))
            else:
                self._due.append((room, COHORT))
        return future

    def fail_overflow(self, exc: BaseException) -> None:
        """Fail every record still queued behind the stream, and wake their callers."""
        while (future := self.from_overflow()) is not None:
            fail((future,), exc, self.counters)
        self.wake_rooms()

    async def submit_all(self, futures: list[BatchFuture[Any]], delay: float | None = None) -> None:
        """Send every future, waiting for room as needed, and letting the event loop
        run between chunks. If that raises (the caller is cancelled, the batcher
        stops), withdraw those already sent. With ``max_queued_cost``, all must fit
        at the start, and their room is kept for them until they are sent."""
        total = 0 if self.settings.max_queued_cost is None else sum(future._cost for future in futures)
        self.admit(total, len(futures))
        self._reserved += total  # kept for them until all are sent (counting the sent ones twice)
        sent = 0
        try:
            for start in range(0, len(futures), INTAKE):  # a turn of the event loop per chunk
                chunk = futures[start : start + INTAKE]
                sent += self._send_at_once(chunk, delay)
                for future in chunk[sent - start :]:  # the stream is full: these wait for room
                    if not self.try_submit(future, delay, admitted=True):
                        await self.submit(future, delay)
                    sent += 1
                await checkpoint()
        except BaseException:
            for future in futures[:sent]:
                future.cancel()
            raise
        finally:
            self._reserved -= total

    def _send_at_once(self, futures: list[BatchFuture[Any]], delay: float | None) -> int:
        """Send the first of ``futures`` that the submission stream has room for, as
        :meth:`try_submit` would one by one (admitted already); return how many."""
        self.check_thread()
        if self.overflow:
            return 0
        send, sent, cost = self.submit_send.send_nowait, 0, 0
        try:
            for future in futures:
                send(future)
                sent += 1
                cost += future._cost
        except anyio.WouldBlock:
            pass
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            if not sent:
                raise RuntimeError(self.refusal()) from self.fatal
        self.counters.submitted += sent
        self.counters.queued_cost += cost
        self._time_sent(futures[:sent])
        self._add_deadlines(futures[:sent], delay)
        return sent

    def _add_deadlines(self, futures: Sequence[BatchFuture[Any]], delay: float | None) -> None:
        # The queue deadline of records just queued: ``delay`` from now, or the setting's.
        if delay is None:
            delay = self.default_delay
        if delay is not None:
            for future in futures:
                self.deadlines.add(future, delay)

    def _time_sent(self, futures: list[BatchFuture[Any]]) -> None:
        # Time records sent together as try_submit() times them one by one.
        if futures and self.counters.timed is None:
            now = monotonic()
            for future in futures if self.counters.observe is not None else futures[:1]:
                time_queued(future, now)

    def refusal(self) -> str:
        """Why records are refused once input has ended."""
        return NOT_RUNNING if self.fatal is None else ENDED.format(self.fatal)

    def end_input(self) -> None:
        """End of input: the aggregator drains the stream and the overflow, flushes, finishes."""
        self._input_ended = True
        self.submit_send.close()
