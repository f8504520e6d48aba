"""Which replica runs the next batch: the routing state behind :mod:`batcher.ray`,
in plain code that knows nothing of Ray (a replica's handle is opaque here).

A replica is up (it takes batches), down (it failed; :mod:`batcher.ray` is bringing
it back) or dead (it will not come back). Each time it comes back its generation
grows, so that a failure reported late, by a batch the old actor held, is told
apart from a failure of the actor that now serves.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, TypeAlias

import anyio

from ._exceptions import NoLiveReplicaError

__all__ = ("Pool", "Replica", "ReplicaStats", "State")

State: TypeAlias = Literal["up", "down", "dead"]


@dataclasses.dataclass(frozen=True, slots=True)
class ReplicaStats:
    """One replica's counters (``RayReplicas.stats``)."""

    #: Its place among the replicas, from 0.
    index: int
    #: ``"up"`` (takes batches), ``"down"`` (failed, being restarted or replaced)
    #: or ``"dead"`` (out of rotation for good).
    state: State
    #: Batches it answered (with results or with the model's exception).
    batches: int
    #: Records in those batches.
    records: int
    #: Batches sent to it and not yet answered.
    in_flight: int
    #: Times it failed (its actor died or was unreachable while it held a batch).
    failures: int
    #: Times its actor was replaced by a new one.
    replacements: int


@dataclasses.dataclass(slots=True, eq=False)
class Replica:
    """One replica's place in the pool: its current actor handle and its counters."""

    index: int
    handle: Any
    #: Whether the pool made the actor (and may kill and replace it).
    owned: bool
    state: State = "up"
    generation: int = 0
    in_flight: int = 0
    in_flight_records: int = 0
    batches: int = 0
    records: int = 0
    failures: int = 0
    replacements: int = 0
    #: Replacements since it last answered a batch (a model that cannot start stops at the limit).
    replacements_in_a_row: int = 0

    def snapshot(self) -> ReplicaStats:
        return ReplicaStats(
            self.index, self.state, self.batches, self.records, self.in_flight, self.failures, self.replacements
        )


class Pool:
    """The replicas and the rule that picks one for a batch: among those up with
    room for another batch (at most ``per_replica`` at once), the one with the
    fewest batches in flight, then the fewest records in flight, then the fewest
    batches answered. A batch waits while every replica is full or down, and fails
    with :exc:`NoLiveReplicaError` once every replica is dead."""

    __slots__ = ("_changed", "per_replica", "replicas")

    def __init__(self, replicas: list[Replica], per_replica: int) -> None:
        self.replicas = replicas
        self.per_replica = per_replica
        self._changed = anyio.Event()  # set (and replaced) when a replica frees room, comes back or dies

    def pick(self, excluded: tuple[Replica, int] | None = None) -> Replica | None:
        """The replica for the next batch, or ``None`` if none is up with room.
        ``excluded`` is a replica and generation the batch must not go back to."""
        best: Replica | None = None
        for replica in self.replicas:
            if replica.state != "up" or replica.in_flight >= self.per_replica:
                continue
            if excluded is not None and (replica, replica.generation) == excluded:
                continue
            if best is None or _load(replica) < _load(best):
                best = replica
        return best

    async def acquire(self, records: int, excluded: tuple[Replica, int] | None = None) -> Replica:
        """Wait for a replica with room, and count a batch of ``records`` records in on it.

        :raises NoLiveReplicaError: if every replica is dead
        """
        while True:
            replica = self.pick(excluded)
            if replica is not None:
                replica.in_flight += 1
                replica.in_flight_records += records
                return replica
            if all(replica.state == "dead" for replica in self.replicas):
                raise NoLiveReplicaError(self._dead_message())
            await self._changed.wait()

    async def settled(self) -> None:
        """Wait until no replica is down (each is up, or given up)."""
        while any(replica.state == "down" for replica in self.replicas):
            await self._changed.wait()

    def release(self, replica: Replica, records: int, *, answered: bool) -> None:
        """Count a batch out of ``replica``; ``answered`` if the replica gave its results
        (or the model's exception) rather than failing itself."""
        replica.in_flight -= 1
        replica.in_flight_records -= records
        if answered:
            replica.batches += 1
            replica.records += records
            replica.replacements_in_a_row = 0
        self.changed()

    def fail(self, replica: Replica, generation: int) -> bool:
        """A batch sent to ``replica`` at ``generation`` found it gone. Take it out
        of rotation; return whether it was up until now (then the caller brings it back)."""
        if replica.state != "up" or replica.generation != generation:
            return False  # already down, or the failure is the old actor's
        replica.state = "down"
        replica.failures += 1
        self.changed()
        return True

    def replace(self, replica: Replica, handle: Any) -> None:
        """Give the (down) ``replica`` a new actor, counted as a replacement."""
        replica.handle = handle
        replica.replacements += 1
        replica.replacements_in_a_row += 1

    def back(self, replica: Replica) -> None:
        """Put ``replica`` back in rotation (its actor answered again, or is new)."""
        replica.generation += 1
        replica.state = "up"
        self.changed()

    def bury(self, replica: Replica) -> None:
        """Take ``replica`` out of rotation for good."""
        replica.state = "dead"
        self.changed()

    def changed(self) -> None:
        """Wake every batch waiting for a replica, to look again."""
        self._changed.set()
        self._changed = anyio.Event()

    def _dead_message(self) -> str:
        return f"every replica ({len(self.replicas)}) has died and none can be restarted; see the log for their errors"


def _load(replica: Replica) -> tuple[int, int, int]:
    return (replica.in_flight, replica.in_flight_records, replica.batches)
