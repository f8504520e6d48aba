"""Batches served by model replicas on a Ray cluster (the ``ray`` extra).

:class:`RayReplicas` is a process function: each batch the batcher forms runs on
one of several Ray actors, each holding one copy of the model. The batcher keeps
its front end (budgets, padding-aware grouping, priorities, deadlines,
cancellation); Ray places the actors (on GPUs, on other machines) and the
replicas fail over::

    import ray
    from batcher.ray import RayReplicas

    ray.init()  # a local cluster; ray.init(address=...) joins one
    replicas = RayReplicas(Embedder, "all-MiniLM-L6-v2", num_replicas=4, actor_options={"num_gpus": 1})
    async with replicas.token_batcher(target_batch_tokens=8_192) as batcher:
        vector = await batcher.call(Prompt("hello"))

The replicas start when the batcher starts (``start()`` returns once every one is
ready) and are killed when it stops. The library never starts a Ray cluster:
call ``ray.init()`` first.

Waiting on Ray: every batch's result is awaited in a worker thread (``ray.get``),
which works alike under asyncio and trio and never blocks the event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import TaskGroup

from ._dynamic import DynamicBatcher
from ._exceptions import NoLiveReplicaError
from ._ray_actors import MODEL_ERROR, REPLICA_LOST, Actors, is_actor_class, ray
from ._replicas import Pool, Replica, ReplicaStats
from ._settings import check_int, check_timeout
from ._token import TokenBatcher

__all__ = ("NoLiveReplicaError", "RayReplicas", "ReplicaStats")

logger = logging.getLogger("batcher")

NOT_STARTED = "RayReplicas runs only as a running batcher's process function: start the batcher (async with batcher:)"
GENERATOR = (
    "method: the replicas' {!r} is a generator, which Ray runs as a stream of object refs; "
    "RayReplicas needs a method that returns the batch's results (a list, one per record)"
)
IN_USE = "RayReplicas already serves a running batcher; stop that batcher first, or make another RayReplicas"
NO_CLUSTER = (
    "RayReplicas needs a Ray cluster, and never starts one itself: call ray.init() (a local cluster) "
    "or ray.init(address=...) before starting the batcher"
)


def _check_method_name(method: object) -> None:
    if not isinstance(method, str) or not method:
        raise TypeError(f"method must be the name of the model's batch method, got {method!r}")


class RayReplicas:
    """A process function that runs each batch on one of ``num_replicas`` Ray
    actors of ``model_class``, built as ``model_class(*init_args, **init_kwargs)``
    once per replica. Its ``method`` (``__call__`` by default; plain or
    ``async def``) takes a list of records and returns one result per record, in
    order (an ``Exception`` in a slot fails only that record).

    - **Routing:** a batch goes to the replica with the fewest batches in flight
      (then the fewest records in flight), never more than ``batches_per_replica``
      at once per replica; while every replica is full, it waits.
    - **Failover:** a replica whose actor dies while it holds a batch (killed, its
      process crashed, its node lost) is taken out of rotation and its batch is
      retried once on another replica, which must answer a ping first (one found
      dead is taken out too, not counted as the batch's). The model may then have run the batch
      twice; its results are delivered once. The replica is replaced by a new
      actor (or, for actors you passed in, waited for while Ray restarts it) and
      put back once it answers. A replica replaced ``max_restarts`` times in a
      row without answering a batch is given up. Once every replica is given up,
      batches fail with :exc:`NoLiveReplicaError`.
    - **Lifecycle:** the batcher enters it as it starts (the actors are made and
      ``start()`` waits until each is ready, at most ``ready_timeout_s``) and
      exits it as it stops (the actors are killed). Give the batcher
      ``max_concurrent_batches=replicas.capacity``, or make it with
      :meth:`token_batcher` / :meth:`dynamic_batcher`, which do.

    An exception the model raises fails the batch as it would in process (Ray
    raises it as a ``RayTaskError`` that is also an instance of the model's
    exception class); it is not retried.

    :param model_class: a class (or a ``@ray.remote`` actor class)
    :param num_replicas: how many actors
    :param actor_options: options for each actor, as ``ActorClass.options()``
        takes them (``num_gpus``, ``num_cpus``, ``resources``, ...)
    :param batches_per_replica: batches one replica runs at once (Ray's
        ``max_concurrency`` is set to it unless ``actor_options`` sets it)
    :param method: the name of the model's batch method
    :param max_restarts: replacements of one replica in a row before it is given up
    :param ready_timeout_s: how long an actor may take to start (build the model),
        or ``None`` to wait as long as it takes
    :raises TypeError: for an argument of the wrong type, naming it
    :raises ValueError: for a value out of range, naming it
    :raises ImportError: if Ray is not installed (the ``ray`` extra)
    """

    def __init__(
        self,
        model_class: Any,
        *init_args: Any,
        num_replicas: int = 1,
        actor_options: Mapping[str, Any] | None = None,
        batches_per_replica: int = 1,
        method: str = "__call__",
        max_restarts: int = 3,
        ready_timeout_s: float | None = 300.0,
        **init_kwargs: Any,
    ) -> None:
        if not isinstance(model_class, type) and not is_actor_class(model_class):
            raise TypeError(f"model_class must be a class or a Ray actor class, got {type(model_class).__name__}")
        check_int("num_replicas", num_replicas, 1)
        if actor_options is not None and not isinstance(actor_options, Mapping):
            raise TypeError(f"actor_options must be a mapping, got {type(actor_options).__name__}")
        check_int("max_restarts", max_restarts, 0)
        options = {"max_concurrency": batches_per_replica, **(actor_options or {})}
        actors = Actors(
            model_class, init_args, init_kwargs, options, given=None, max_restarts=max_restarts, ready_timeout_s=0
        )
        self._init(actors, num_replicas, batches_per_replica, method, ready_timeout_s)
        if isinstance(model_class, type) and not callable(getattr(model_class, method, None)):
            raise TypeError(f"method: {model_class.__name__} has no method {method!r}")
        self._name = getattr(model_class, "__name__", "model")

    def _init(
        self, actors: Actors, count: int, batches_per_replica: int, method: str, ready_timeout_s: float | None
    ) -> None:
        check_int("batches_per_replica", batches_per_replica, 1)
        _check_method_name(method)
        actors.ready_timeout_s = check_timeout("ready_timeout_s", ready_timeout_s)
        self._actors = actors
        self._num_replicas = count
        self._per_replica = batches_per_replica
        self._method = method
        self._pool: Pool | None = None
        self._tasks: TaskGroup | None = None  # brings lost replicas back; open while serving
        self._in_use = False  # a batcher is starting or running on these replicas
        self._last_stats: tuple[ReplicaStats, ...] = ()

    @classmethod
    def from_actors(
        cls,
        actors: Sequence[Any],
        *,
        batches_per_replica: int = 1,
        method: str = "__call__",
        ready_timeout_s: float | None = 300.0,
    ) -> RayReplicas:
        """Serve batches with actors you made (and own): they are never killed or
        replaced. One that dies is waited for while Ray restarts it (give it
        ``max_restarts`` in its options) and given up if Ray cannot.

        :raises TypeError: if ``actors`` is not a non-empty sequence of actor handles,
            or one of them has no such method or a generator one
        """
        if isinstance(actors, str | bytes) or not isinstance(actors, Sequence) or not actors:
            raise TypeError(f"actors must be a non-empty sequence of Ray actor handles, got {actors!r}")
        _check_method_name(method)
        for actor in actors:
            if not isinstance(actor, ray.actor.ActorHandle):
                raise TypeError(f"actors must hold Ray actor handles, got {type(actor).__name__}")
            if not hasattr(actor, method):
                raise TypeError(f"method: the actors have no method {method!r}")
            if getattr(getattr(actor, method), "_is_generator", False):
                raise TypeError(GENERATOR.format(method))
        replicas = cls.__new__(cls)
        given = Actors(None, (), {}, {}, given=list(actors), max_restarts=0, ready_timeout_s=0)
        replicas._init(given, len(actors), batches_per_replica, method, ready_timeout_s)
        replicas._name = "given actors"
        return replicas

    # ------------------------------------------------------------- the public face

    @property
    def capacity(self) -> int:
        """How many batches the replicas run at once: the batcher's ``max_concurrent_batches``."""
        return self._num_replicas * self._per_replica

    @property
    def actors(self) -> list[Any]:
        """The actor handles serving now, one per replica (empty while not serving)."""
        return [] if self._pool is None else [replica.handle for replica in self._pool.replicas]

    @property
    def stats(self) -> tuple[ReplicaStats, ...]:
        """Each replica's counters (:class:`ReplicaStats`), as of now or of the last run."""
        return self._last_stats if self._pool is None else tuple(r.snapshot() for r in self._pool.replicas)

    async def wait_ready(self) -> None:
        """Wait until no replica is being brought back: each is up or given up (see
        :attr:`stats`). Returns at once while the replicas are not serving."""
        if self._pool is not None:
            await self._pool.settled()

    def token_batcher(self, **settings: Any) -> TokenBatcher[Any, Any]:
        """A :class:`~batcher.TokenBatcher` on these replicas, with
        ``max_concurrent_batches=capacity`` unless ``settings`` give it."""
        settings.setdefault("max_concurrent_batches", self.capacity)
        return TokenBatcher(self, **settings)

    def dynamic_batcher(self, **settings: Any) -> DynamicBatcher[Any, Any]:
        """A :class:`~batcher.DynamicBatcher` on these replicas, with
        ``max_concurrent_batches=capacity`` unless ``settings`` give it."""
        settings.setdefault("max_concurrent_batches", self.capacity)
        return DynamicBatcher(self, **settings)

    def __repr__(self) -> str:
        return f"<RayReplicas {self._name} replicas={self._num_replicas} batches_per_replica={self._per_replica}>"

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> RayReplicas:
        if self._in_use:
            raise RuntimeError(IN_USE)
        if not ray.is_initialized():
            raise RuntimeError(NO_CLUSTER)
        self._in_use = True  # from now on: another batcher starting meanwhile is refused
        actors = self._actors
        actors.open(threads=2 * self.capacity + self._num_replicas)  # batches, abandoned batches, revivals
        try:
            handles = await actors.start(self._num_replicas)
            await self._check_method(handles)
        except BaseException:
            self._in_use = False
            raise
        owned = actors.given is None
        self._pool = Pool([Replica(i, handle, owned) for i, handle in enumerate(handles)], self._per_replica)
        self._tasks = anyio.create_task_group()
        await self._tasks.__aenter__()
        return self

    async def _check_method(self, handles: list[Any]) -> None:
        # A Ray actor class hides its methods until an actor exists: checked here (given
        # actors, which may be of several classes, each as from_actors() takes them).
        method = getattr(handles[0], self._method, None)
        if method is None or getattr(method, "_is_generator", False):
            await self._actors.stop(handles)
            if method is not None:
                raise TypeError(GENERATOR.format(self._method))
            raise TypeError(f"method: the replicas' actors have no method {self._method!r}")

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        pool, tasks = self._pool, self._tasks
        assert pool is not None
        assert tasks is not None
        try:
            tasks.cancel_scope.cancel()
            await tasks.__aexit__(None, None, None)
        finally:
            self._last_stats = tuple(replica.snapshot() for replica in pool.replicas)
            self._pool = self._tasks = None
            try:
                await self._actors.stop([replica.handle for replica in pool.replicas])
            finally:
                self._in_use = False

    # ----------------------------------------------------------------- a batch

    async def __call__(self, records: list[Any]) -> list[Any]:
        """Run one batch on a replica, retried once on another if that replica is lost.

        :raises NoLiveReplicaError: if every replica is dead
        :raises RuntimeError: if the replicas are not serving a running batcher
        """
        pool = self._pool
        if pool is None:
            raise RuntimeError(NOT_STARTED)
        excluded: tuple[Replica, int] | None = None
        while True:
            replica = await pool.acquire(len(records), excluded)
            generation = replica.generation
            if excluded is not None and not await self._answers(pool, replica, len(records)):
                # Dead before the retry came (replicas that died while idle): not the
                # batch's doing, so it does not count as the batch's second loss.
                pool.release(replica, len(records), answered=False)
                self._lost(pool, replica, generation, "found dead")
                continue
            try:
                results: list[Any] = await self._run_on(replica, records)
            except MODEL_ERROR:  # (first: one about an actor the model called is also a RayActorError)
                pool.release(replica, len(records), answered=True)
                raise  # the model's own exception (also an instance of its class)
            except REPLICA_LOST as exc:
                pool.release(replica, len(records), answered=False)
                self._lost(pool, replica, generation, type(exc).__name__)
                if excluded is not None:
                    raise  # lost twice, each time on a replica that was alive: the batch fails
                excluded = (replica, generation)
                continue
            except anyio.get_cancelled_exc_class():
                raise  # the replica's place is released when the actor ends the batch (_drain)
            except BaseException:
                pool.release(replica, len(records), answered=False)
                raise
            pool.release(replica, len(records), answered=True)
            return results

    async def _answers(self, pool: Pool, replica: Replica, records: int) -> bool:
        # Whether the replica taken for a retry is alive; its place is given back if
        # the batch is cancelled meanwhile (by process_timeout_s, an abort).
        try:
            return await self._actors.answers(replica.handle)
        except BaseException:
            pool.release(replica, records, answered=False)
            raise

    async def _run_on(self, replica: Replica, records: list[Any]) -> Any:
        ref = getattr(replica.handle, self._method).remote(records)
        if isinstance(ref, ray.ObjectRefGenerator):  # (start() refuses such a method where Ray tells)
            ray.cancel(ref)
            raise TypeError(GENERATOR.format(self._method))
        try:
            return await self._actors.get(ref)
        except anyio.get_cancelled_exc_class():
            # The actor may still be running the batch: its place stays taken until it ends.
            assert self._tasks is not None
            self._tasks.start_soon(self._drain, replica, ref, len(records))
            raise

    async def _drain(self, replica: Replica, ref: Any, records: int) -> None:
        try:
            await self._actors.get(ref)
        except Exception:
            pass  # nobody waits for this batch any more
        finally:
            if self._pool is not None:
                self._pool.release(replica, records, answered=False)

    def _lost(self, pool: Pool, replica: Replica, generation: int, why: str) -> None:
        if not pool.fail(replica, generation):
            return  # already being brought back
        logger.warning("replica %d lost (%s); its batch is retried elsewhere", replica.index, why)
        assert self._tasks is not None
        self._tasks.start_soon(self._actors.revive, pool, replica)
