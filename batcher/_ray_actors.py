"""The Ray side of :mod:`batcher.ray`: making, calling, waiting for, replacing and
killing the replicas' actors. Every wait on Ray runs ``ray.get`` in a worker
thread, which works alike under asyncio and trio and never blocks the event loop.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import anyio

from ._replicas import Pool, Replica

__all__ = ("REPLICA_LOST", "Actors", "is_actor_class", "ray")

logger = logging.getLogger("batcher")


def _require_ray() -> ModuleType:
    try:
        return importlib.import_module("ray")
    except ImportError as exc:
        raise ImportError(
            "batcher.ray needs Ray; install batcher's 'ray' extra (pip install -e '.[ray]' in batcher's checkout)"
        ) from exc


ray = _require_ray()
_errors = importlib.import_module("ray.exceptions")
#: The model's own exception, raised by Ray as a ``RayTaskError`` that is also an
#: instance of the model's exception class.
MODEL_ERROR: type[BaseException] = _errors.RayTaskError
#: A batch that failed with one of these found its replica gone (the actor died, its
#: process crashed, its node went away): it is retried once on another replica.
REPLICA_LOST: tuple[type[BaseException], ...] = (
    _errors.RayActorError,
    _errors.WorkerCrashedError,
    _errors.NodeDiedError,
    _errors.LocalRayletDiedError,
)
#: How long stopping waits for the killed actors to be gone.
STOP_WAIT_S = 10.0
#: Waiting for a lost replica's actor to answer again failed with one of these.
_NOT_READY: tuple[type[BaseException], ...] = (TimeoutError, *REPLICA_LOST)


def is_actor_class(obj: object) -> bool:
    """Whether ``obj`` is a ``@ray.remote`` class."""
    return isinstance(obj, ray.actor.ActorClass)


class Actors:
    """How to make the replicas' actors (or that they were given and are not ours),
    and every call to Ray about them."""

    __slots__ = ("_args", "_kwargs", "_limiter", "_model_class", "_options", "given", "max_restarts", "ready_timeout_s")

    def __init__(
        self,
        model_class: Any,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        options: Mapping[str, Any],
        *,
        given: list[Any] | None,
        max_restarts: int,
        ready_timeout_s: float | None,
    ) -> None:
        self._model_class = model_class
        self._args, self._kwargs, self._options = args, kwargs, options
        #: Actors the user made (never killed or replaced), or ``None`` if the pool makes its own.
        self.given = given
        self.max_restarts = max_restarts
        self.ready_timeout_s = ready_timeout_s
        self._limiter: anyio.CapacityLimiter | None = None  # the threads that wait on Ray

    def open(self, threads: int) -> None:
        """Get ready to serve (on the event loop): at most ``threads`` threads wait on Ray at once."""
        self._limiter = anyio.CapacityLimiter(threads)

    def new(self) -> Any:
        """A new actor, starting (it builds the model)."""
        model_class = self._model_class
        actor_class = model_class if is_actor_class(model_class) else ray.remote(model_class)
        return actor_class.options(**self._options).remote(*self._args, **self._kwargs)

    async def start(self, count: int) -> list[Any]:
        """The actors of ``count`` replicas, each ready (made now, unless given)."""
        handles = [] if self.given is None else list(self.given)
        try:
            while len(handles) < count:
                handles.append(self.new())  # may raise (a detached actor's name taken): those made are killed
            await self.wait_ready(handles, f"{len(handles)} replicas")
        except BaseException:
            self.kill(handles)
            raise
        return handles

    async def stop(self, handles: list[Any]) -> None:
        """Kill these actors (unless given) and wait until each is gone, at most
        ``STOP_WAIT_S``, so that what they held (a GPU) is free once the batcher has
        stopped. Shielded: it runs to the end even when the batcher is cancelled."""
        if self.given is not None:
            return
        self.kill(handles)
        deadline = time.monotonic() + STOP_WAIT_S
        with anyio.CancelScope(shield=True):
            # Not through the limiter: threads of batches cancelled on a stuck actor may hold it.
            await anyio.to_thread.run_sync(_wait_gone, handles, deadline)

    def kill(self, handles: list[Any]) -> None:
        """Kill these actors, unless they were given."""
        if self.given is not None:
            return
        for handle in handles:
            try:
                ray.kill(handle)
            except Exception as exc:  # already gone, or the cluster is shutting down
                logger.debug("could not kill replica actor: %r", exc)

    async def wait_ready(self, handles: list[Any], what: str) -> None:
        """Wait until every actor in ``handles`` answers (its model is built).

        :raises TimeoutError: if that takes longer than ``ready_timeout_s``
        :raises RayActorError: if an actor died (its constructor raised, say)
        """
        refs = [handle.__ray_ready__.remote() for handle in handles]
        try:
            await self.get(refs, self.ready_timeout_s)
        except _errors.GetTimeoutError:
            raise TimeoutError(
                f"{what} not ready after ready_timeout_s={self.ready_timeout_s} s "
                "(does the cluster have the resources actor_options ask for?)"
            ) from None

    async def get(self, ref: Any, timeout: float | None = None) -> Any:  # noqa: ASYNC109 (Ray's own timeout)
        """``ray.get(ref)`` in a worker thread; if cancelled, ask Ray to cancel the task."""
        try:
            return await anyio.to_thread.run_sync(
                lambda: ray.get(ref, timeout=timeout), abandon_on_cancel=True, limiter=self._limiter
            )
        except anyio.get_cancelled_exc_class():
            _cancel(ref if isinstance(ref, list) else [ref])
            raise

    async def answers(self, handle: Any) -> bool:
        """Whether the actor answers now (``False``: it is gone)."""
        try:
            await self.get(handle.__ray_ready__.remote())
        except REPLICA_LOST:
            return False
        return True

    async def revive(self, pool: Pool, replica: Replica) -> None:
        """Bring a lost replica back: wait for its actor (Ray may restart it), or
        replace the actor if it is ours; give the replica up if neither works."""
        while True:
            try:
                await self.wait_ready([replica.handle], f"replica {replica.index}")
            except _NOT_READY as exc:
                if not replica.owned or replica.replacements_in_a_row >= self.max_restarts:
                    return _give_up(pool, replica, exc)
                self.kill([replica.handle])
                try:
                    handle = self.new()
                except Exception as error:  # (a detached actor's name still taken, the cluster in trouble)
                    return _give_up(pool, replica, error)  # not the batcher's end: the other replicas serve on
                pool.replace(replica, handle)
                logger.warning("replica %d replaced by a new actor", replica.index)
                continue
            except Exception as exc:  # what else Ray may raise: the replica cannot be told alive
                return _give_up(pool, replica, exc)
            pool.back(replica)
            logger.info("replica %d back in rotation", replica.index)
            return


def _give_up(pool: Pool, replica: Replica, why: BaseException) -> None:
    logger.error("replica %d given up: %r", replica.index, why)
    pool.bury(replica)


def _wait_gone(handles: list[Any], deadline: float) -> None:
    # Ray has no call that waits for an actor's death: ask each killed actor whether
    # it still answers until it does not (a kill lands within milliseconds).
    for handle in handles:
        while time.monotonic() < deadline:
            try:
                ray.get(handle.__ray_ready__.remote(), timeout=max(deadline - time.monotonic(), 0.001))
            except REPLICA_LOST:
                break
            except _errors.GetTimeoutError:
                return
            time.sleep(0.005)


def _cancel(refs: list[Any]) -> None:
    for ref in refs:
        try:
            ray.cancel(ref)
        except Exception as exc:  # already finished, or not cancellable
            logger.debug("could not cancel a Ray task: %r", exc)
