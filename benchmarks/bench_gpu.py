"""Workload G: batching on a GPU (issue 15), a BERT-style encoder with random weights
(timing only) for a small and a large model, as one command.

1. Threads: the same batches of 64 records, warmed up in the thread that runs them,
   run in the main thread, in anyio's worker thread, and in one persistent thread
   (a first and a second pass); then many distinct shapes, as padded batches
   bring, cold and warm, in the main thread and in the persistent thread.
2. Execution modes through the batcher, in a closed loop of 64 producers: a plain
   process function (it runs in a worker thread) and an ``async def`` one that
   calls the model on the event loop; with the longest stall of a 1 ms ticker, and
   the time of a pass without the ticker. Rounds of a pass with the ticker, one
   without, and the bare model on the same batches, in turns; the medians count.
3. Batching: flyte's ``TokenBatcher`` (sum budget, arrival order), the batcher with
   a sum budget (FIFO), with a padded budget in arrival order (``cost_model="padded"``),
   ``cost_model="padded"`` with ``group_by_cost=True``, and ``cost_model="measured"``,
   in an open and a closed loop, against an offline run of the corpus sorted by
   length and cut into budget-full batches (in the main thread, taking its turn in
   each round); with each policy's largest batch in
   padded tokens (a sum budget lets it pass the budget). In the open loop also
   padded grouping and ``measured`` ``uncapped``: with a ``max_batch_size`` the
   budget reaches first (budget // shortest text) instead of the default 256, which
   closes batches of short texts early (``python -m benchmarks.bench_cap``).
4. ``unbound`` (not run unless named): the closed loop again, each padded policy
   with a padded budget no closed loop of 64 can reach (64 x 512), against FIFO
   with its sum budget: the policies at equal memory.

The small model gets 4,096 texts, the large one 2,048 (its passes are long enough
to be steady). Parts 1-3 took 284 s on an H200 (run 9, BENCHMARKS.md); 30-70 s a
model of that is each thread's first, cold run of each shape. ``--brief`` (what
``python -m benchmarks --gpu`` runs) makes one warm and one timed pass of each
policy and one round of modes: about 3 minutes, at the cost of the turns' medians.

Without a CUDA device it prints why it skipped and exits 0. ``--device cpu`` runs
the same code on the CPU with a tiny model (a check that it works, not a
measurement)::

    python -m benchmarks --gpu                     # with A-E, S (and F with --with-model); G --brief
    python -m benchmarks.bench_gpu                 # G alone, about 5 minutes of GPU time
    python -m benchmarks.bench_gpu --brief         # about 3 minutes
    python -m benchmarks.bench_gpu --parts unbound --passes 5
    python -m benchmarks.bench_gpu --quick --device cpu
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import random
import statistics
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import anyio

from batcher import FittedCost, TokenBatcher, _measured
from benchmarks import flyte_ref
from benchmarks.scaling import longest_gap_ms

PRODUCERS = 64
SKIPPED = "G  skipped: no CUDA device (torch.cuda.is_available() is false); `--device cpu` checks the code on the CPU"


@dataclass(frozen=True)
class Sizes:
    budget: int
    models: dict[str, tuple[int, int, int, int]]  # name -> (layers, hidden, heads, texts)
    thread_batches: int
    #: Timed passes of each policy, taken in turns; the median counts.
    passes: int = 3
    #: Rounds of each execution mode's passes and the bare model's, taken in turns.
    mode_rounds: int = 2
    #: Passes over the corpus before the timed ones, in the same batcher (a steady
    #: state); the first meets every shape its thread will run.
    warm_passes: int = 2


# The large model's passes take long enough to be steady with half the texts; so sized,
# parts 1-3 took 284 s on an H200 (``--passes`` and ``--mode-rounds`` for more).
FULL = Sizes(16_384, {"small (6 x 384)": (6, 384, 12, 4096), "large (24 x 1024)": (24, 1024, 16, 2048)}, 32)
QUICK = Sizes(2_048, {"tiny (2 x 64)": (2, 64, 2, 256)}, 8)
#: ``python -m benchmarks --gpu``'s sizing (``--brief``): issue 15's "about 3 minutes";
#: one pass of each, so its figures carry the GPU's pass-to-pass noise (up to 1.5x).
BRIEF = replace(FULL, passes=1, mode_rounds=1, warm_passes=1)


class Encoder:
    """A random-weight BERT encoder on ``device``, embedding records that are indices
    into a fixed corpus of token ids; counts real and padded tokens."""

    def __init__(self, shape: tuple[int, int, int], device: str, lengths: list[int]) -> None:
        import torch
        from transformers import BertConfig, BertModel

        layers, hidden, heads = shape
        config = BertConfig(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=4 * hidden,
            max_position_embeddings=512,
        )
        dtype = torch.float16 if device == "cuda" else torch.float32
        self.torch, self.device = torch, device
        self.model = BertModel(config).to(device, dtype).eval()
        self.lengths = lengths
        generator = torch.Generator().manual_seed(5)
        self.ids = [torch.randint(1000, 30000, (n,), generator=generator) for n in lengths]
        self._shapes: set[tuple[int, int, int]] = set()  # (thread, rows, width) run so far
        self.reset()

    def embed(self, batch: Sequence[int]) -> list[Any]:
        """The batch's embeddings, waiting for the device (a blocking model); adds the
        seconds it took to ``busy``."""
        started = time.perf_counter()
        pooled, _ = self.launch(batch)
        embeddings = list(pooled.float().cpu())
        self.busy += time.perf_counter() - started
        return embeddings

    def launch(self, batch: Sequence[int]) -> tuple[Any, Any]:
        """Queue the batch's work on the device; its pooled output and an event that is
        set once that work is done (on the CPU, done already)."""
        torch = self.torch
        ids, mask = self._inputs(batch)
        ids, mask = ids.to(self.device), mask.to(self.device)
        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            weights = mask.unsqueeze(-1).to(out.dtype)
            pooled = (out * weights).sum(1) / weights.sum(1)
        done = torch.cuda.Event() if self.device == "cuda" else _Done()
        done.record()
        return pooled, done

    def stages(self, batch: Sequence[int]) -> tuple[float, float, float, float]:
        """Seconds spent filling the inputs, copying them over, running the model
        (launch and wait) and copying the output back, each waited for."""
        torch, sync = self.torch, self._sync
        started = time.perf_counter()
        ids, mask = self._inputs(batch)
        filled = time.perf_counter()
        ids, mask = ids.to(self.device), mask.to(self.device)
        sync()
        copied = time.perf_counter()
        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            pooled = (out * mask.unsqueeze(-1).to(out.dtype)).sum(1)
        sync()
        ran = time.perf_counter()
        pooled.float().cpu()
        return filled - started, copied - filled, ran - copied, time.perf_counter() - ran

    def _inputs(self, batch: Sequence[int]) -> tuple[Any, Any]:
        torch = self.torch
        width = max(self.lengths[i] for i in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, index in enumerate(batch):
            ids[row, : self.lengths[index]] = self.ids[index]
            mask[row, : self.lengths[index]] = 1
        self.batches += 1
        shape = (threading.get_ident(), len(batch), width)
        if shape not in self._shapes:
            self._shapes.add(shape)
            self.new_shapes += 1
        if self._record:
            self.seen.append(list(batch))
        self.real += sum(self.lengths[i] for i in batch)
        self.padded += len(batch) * width
        self.peak = max(self.peak, len(batch) * width)
        return ids, mask

    def _sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def warm(self, batches: list[list[int]]) -> None:
        """Run, in this thread, each of ``batches`` of a shape this thread has not run."""
        ident, known = threading.get_ident(), self._shapes
        for batch in batches:
            if (ident, len(batch), max(self.lengths[i] for i in batch)) not in known:
                self.embed(batch)

    def reset(self, record: bool = False) -> None:
        """Zero the counts; with ``record``, keep each batch from now on in ``seen``."""
        self.real = self.padded = self.batches = self.new_shapes = self.peak = 0
        self.busy = 0.0
        self.seen: list[list[int]] = []
        self._record = record


class _Done:
    """A CPU stand-in for a CUDA event: the work is done when it is launched."""

    def record(self) -> None:
        pass

    def synchronize(self) -> None:
        pass


def corpus_lengths(texts: int) -> list[int]:
    """Token counts, log-normal (median about 37), 8 to 512."""
    rng = random.Random(5)
    return [min(512, max(8, round(rng.lognormvariate(3.6, 0.8)))) for _ in range(texts)]


def _per_batch_ms(run: Callable[[Sequence[int]], object], batches: list[list[int]]) -> float:
    started = time.perf_counter()
    for batch in batches:
        run(batch)
    return (time.perf_counter() - started) / len(batches) * 1e3


def thread_lines(encoder: Encoder, sizes: Sizes) -> list[str]:
    """Item 1: the same batches in each thread, warmed up in that thread first."""
    rng = random.Random(7)
    count = len(encoder.lengths)
    same = [rng.sample(range(count), PRODUCERS) for _ in range(sizes.thread_batches)]
    shapes = [rng.sample(range(count), rng.randint(1, PRODUCERS)) for _ in range(sizes.thread_batches)]
    embed = encoder.embed
    lines = []
    _per_batch_ms(embed, same)
    lines.append(f"main thread, warmed                   {_per_batch_ms(embed, same):8.2f} ms/batch")
    lines.append(f"anyio worker thread, warmed there     {anyio.run(_in_anyio_thread, embed, same):8.2f} ms/batch")
    with ThreadPoolExecutor(max_workers=1) as thread:
        first = thread.submit(_per_batch_ms, embed, same).result()
        second = thread.submit(_per_batch_ms, embed, same).result()
        lines.append(f"one persistent thread, 1st / 2nd pass {first:8.2f} / {second:.2f} ms/batch")
        cold = thread.submit(_per_batch_ms, embed, shapes).result()
        warm = thread.submit(_per_batch_ms, embed, shapes).result()
        in_thread = thread.submit(_stage_ms, encoder, same).result()
    lines.append(f"distinct shapes, persistent thread    {cold:8.2f} cold, {warm:.2f} warm ms/batch")
    cold, warm = _per_batch_ms(embed, shapes), _per_batch_ms(embed, shapes)
    lines.append(f"distinct shapes, main thread          {cold:8.2f} cold (after the thread), {warm:.2f} warm")
    lines.append("stages: fill / copy in / model / copy out, each waited for, ms/batch")
    lines.append(f"  main thread                         {_stage_ms(encoder, same)}")
    lines.append(f"  persistent thread                   {in_thread}")
    return lines


def _stage_ms(encoder: Encoder, batches: list[list[int]]) -> str:
    totals = [0.0] * 4
    for batch in batches:
        for stage, seconds in enumerate(encoder.stages(batch)):
            totals[stage] += seconds
    return " / ".join(f"{total / len(batches) * 1e3:.2f}" for total in totals)


async def _in_anyio_thread(embed: Callable[[Sequence[int]], object], batches: list[list[int]]) -> float:
    await anyio.to_thread.run_sync(_per_batch_ms, embed, batches)  # warm-up, most likely in the same thread
    return float(await anyio.to_thread.run_sync(_per_batch_ms, embed, batches))


async def closed_loop(batcher: Any, lengths: list[int]) -> None:
    """Each of ``PRODUCERS`` producers submits its share of the corpus (with each text's
    token count), awaiting each result before its next text."""

    async def produce(first: int) -> None:
        for record in range(first, len(lengths), PRODUCERS):
            await (await batcher.submit(record, estimated_cost=lengths[record]))

    async with anyio.create_task_group() as tg:
        for first in range(PRODUCERS):
            tg.start_soon(produce, first)


async def one_pass(batcher: Any, lengths: list[int], closed: bool) -> None:
    """The corpus through ``batcher`` once: in a closed loop, or submitted at once."""
    if closed:
        await closed_loop(batcher, lengths)
    else:
        for future in await batcher.submit_batch(range(len(lengths)), estimated_cost=lengths):
            await future


def launch_then_wait(encoder: Encoder) -> Callable[[list[int]], Awaitable[list[Any]]]:
    """An ``async def`` process function that launches the model's work from the event
    loop and waits for the device in a worker thread."""

    async def process(batch: list[int]) -> list[Any]:
        pooled, done = encoder.launch(batch)
        await anyio.to_thread.run_sync(done.synchronize)
        return list(pooled.float().cpu())

    return process


def mode_lines(encoder: Encoder, sizes: Sizes) -> list[str]:
    """Item 2: the batcher's execution modes in a closed loop, steady state (after a
    first pass in the same batcher), against the bare model on the same batches in the
    main thread, with the event loop's longest stall. Each round runs a pass with the
    ticker, one without it, and the bare model on the first one's batches, so that a
    slow stretch of the machine falls on both sides of a ratio; the medians count."""

    async def on_loop(batch: list[int]) -> list[Any]:
        return encoder.embed(batch)  # blocks the event loop while the device runs

    async def pool_thread(batch: list[int]) -> list[Any]:
        return await anyio.to_thread.run_sync(encoder.embed, batch)  # the default up to 0.x

    modes: list[tuple[str, Any]] = [
        ("plain function (the worker's own thread)", encoder.embed),
        ("async def + anyio.to_thread (pool thread)", pool_thread),
        ("async def, model on the loop", on_loop),
        ("async def, launch on loop, wait in thread", launch_then_wait(encoder)),
    ]
    return [_mode_line(name, encoder, function, sizes) for name, function in modes]


def _mode_line(name: str, encoder: Encoder, function: Any, sizes: Sizes) -> str:
    rounds: list[tuple[float, float, float, float]] = []  # (ticked, quiet, bare, stall)
    cold = [0.0]

    async def timed_pass(batcher: Any, ticker: bool = False) -> tuple[float, float]:
        started = time.perf_counter()
        work = partial(closed_loop, batcher, encoder.lengths)
        stall = 0.0
        if ticker:
            stall = await longest_gap_ms(work)
        else:
            await work()
        return (time.perf_counter() - started) / max(1, encoder.batches) * 1e3, stall

    async def run() -> None:
        async with TokenBatcher(function, target_batch_tokens=sizes.budget) as batcher:
            encoder.reset()
            cold[0] = (await timed_pass(batcher))[0]  # every shape met once, in its thread
            for _ in range(sizes.mode_rounds):
                encoder.reset(record=True)
                ticked, stall = await timed_pass(batcher, ticker=True)
                seen = encoder.seen
                encoder.reset()
                quiet = (await timed_pass(batcher))[0]
                encoder.warm(seen)  # the shapes the main thread has not run yet
                rounds.append((ticked, quiet, _per_batch_ms(encoder.embed, seen), stall))

    anyio.run(run)
    encoder.reset()
    ticked, bare = (statistics.median(r[i] for r in rounds) for i in (0, 2))
    ratios = [r[0] / r[2] for r in rounds]
    return (
        f"{name:<42} {ticked:6.2f} ms/batch ({statistics.median(ratios):4.2f}x bare {bare:.2f}, rounds "
        f"{min(ratios):.2f}-{max(ratios):.2f}x; {statistics.median(r[1] / r[2] for r in rounds):4.2f}x without "
        f"the ticker), 1st pass {cold[0]:6.2f}, loop stall {max(r[3] for r in rounds):5.1f} ms"
    )


def _opener(system: str, encoder: Encoder, budget: int) -> Callable[[], Any]:
    if system.endswith(UNBOUND):  # a padded budget no closed loop of PRODUCERS can reach
        system, budget = system.removesuffix(UNBOUND), PRODUCERS * max(encoder.lengths)
    cap = 256  # max_batch_size's default
    if system.endswith(UNCAPPED):  # a record cap the budget reaches first
        system, cap = system.removesuffix(UNCAPPED), budget // min(encoder.lengths)
    if system == "flyte FIFO sum":
        module = flyte_ref.load().module
        assert module is not None

        async def inference(batch: list[int]) -> list[Any]:
            return await anyio.to_thread.run_sync(encoder.embed, batch)

        return lambda: module.TokenBatcher(inference_fn=inference, target_batch_tokens=budget)
    options = {
        "batcher FIFO sum": dict[str, Any](),
        "batcher FIFO padded": {"cost_model": "padded"},
        "batcher padded grouped": {"cost_model": "padded", "group_by_cost": True},
        "batcher measured": {"cost_model": "measured"},
    }[system]
    queue = max(5_000, len(encoder.lengths))
    return lambda: TokenBatcher(
        encoder.embed, target_batch_tokens=budget, max_batch_size=cap, max_queue_size=queue, **options
    )


@dataclass
class Tally:
    """One system's timed passes: throughput of each, and the batches they ran."""

    rates: list[float] = field(default_factory=list)
    real: int = 0
    padded: int = 0
    batches: int = 0
    new_shapes: int = 0
    peak: int = 0
    gc_s: float = 0.0
    #: Seconds of the passes, and of them in the model (``Encoder.embed``).
    seconds: float = 0.0
    busy: float = 0.0
    picks: Counter[int] = field(default_factory=Counter)
    #: ``cost_model="measured"``'s fit after the last pass.
    fitted: FittedCost | None = None

    def add(self, encoder: Encoder, seconds: float, gc_s: float) -> None:
        """Count the pass that just ran (``encoder``'s counts since its last reset)."""
        self.rates.append(len(encoder.lengths) / seconds)
        self.seconds += seconds
        self.busy += encoder.busy
        self.real += encoder.real
        self.padded += encoder.padded
        self.batches += encoder.batches
        self.new_shapes += encoder.new_shapes
        self.peak = max(self.peak, encoder.peak)
        self.gc_s += gc_s


@contextmanager
def _counted(tallies: dict[str, Tally], running: list[str], gc_s: list[float]) -> Iterator[None]:
    """Count the measured mode's choices in the picks of ``tallies[running[0]]``, the
    system whose pass runs (0: grouped with no floor, 1-3: the floors, 4: arrival
    order), and add the seconds the cyclic GC runs to ``gc_s[0]``."""
    original, first_is_chosen = _measured.choose, _measured.first_is_chosen
    began = [0.0]

    def counted(candidates: Sequence[tuple[int, int, int]], fit: Any) -> int:
        tallies[running[0]].picks[chosen := original(candidates, fit)] += 1
        return chosen

    def counted_first(*args: Any) -> bool:
        if sure := first_is_chosen(*args):  # the others were not planned
            tallies[running[0]].picks[0] += 1
        return sure

    def timing(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            gc_s[0] += time.perf_counter() - began[0]

    _measured.choose, _measured.first_is_chosen = counted, counted_first  # type: ignore[attr-defined]
    gc.callbacks.append(timing)
    try:
        yield
    finally:
        _measured.choose, _measured.first_is_chosen = original, first_is_chosen  # type: ignore[attr-defined]
        gc.callbacks.remove(timing)


def _interleaved(
    encoder: Encoder, systems: Sequence[str], sizes: Sizes, closed: bool, offline: bool = False
) -> dict[str, Tally]:
    """Every system's batcher open at once, each warmed by ``sizes.warm_passes`` passes
    over the corpus (its worker thread meets the shapes: a thread's first batch of a
    shape costs far more), then ``sizes.passes`` rounds of one pass each, taking turns,
    so that a slow stretch of the machine falls on all of them alike. With ``offline``,
    the offline sorted bound (``OFFLINE``, first) takes its turn in each round too."""
    names = [OFFLINE] * offline + list(systems)
    tallies = {name: Tally() for name in names}
    gc_s, running = [0.0], [names[0]]

    async def run() -> None:
        async with AsyncExitStack() as stack:
            batchers = {s: await stack.enter_async_context(_opener(s, encoder, sizes.budget)()) for s in systems}
            passes = {s: partial(one_pass, batcher, encoder.lengths, closed) for s, batcher in batchers.items()}
            if offline:
                bound = partial(_sorted_pass, encoder, sorted_batches(encoder.lengths, sizes.budget))
                passes = {OFFLINE: bound} | passes
            for _ in range(sizes.warm_passes):
                for one in passes.values():
                    await one()
            with _counted(tallies, running, gc_s):
                for _ in range(sizes.passes):
                    for name, one in passes.items():
                        running[0] = name
                        encoder.reset()
                        gc_s[0], started = 0.0, time.perf_counter()
                        await one()
                        tallies[name].add(encoder, time.perf_counter() - started, gc_s[0])
            for system, batcher in batchers.items():
                if isinstance(batcher, TokenBatcher):  # flyte's has no fit
                    tallies[system].fitted = batcher.stats.fitted_cost

    anyio.run(run)
    return tallies


OFFLINE = "offline sorted bound"


def sorted_batches(lengths: list[int], budget: int) -> list[list[int]]:
    """The offline bound's batches: the corpus sorted by length, cut into budget-full
    padded batches (no cap on their records)."""
    batches: list[list[int]] = [[]]
    for index in sorted(range(len(lengths)), key=lengths.__getitem__):
        if batches[-1] and (len(batches[-1]) + 1) * lengths[index] > budget:
            batches.append([])
        batches[-1].append(index)
    return batches


async def _sorted_pass(encoder: Encoder, batches: list[list[int]]) -> None:
    """The offline bound's pass: ``batches`` back to back in the main thread (the loop
    waits; nothing else runs during a turn)."""
    for batch in batches:
        encoder.embed(batch)


def batching_lines(encoder: Encoder, sizes: Sizes) -> list[str]:
    """Item 3: the systems in both loops, each against the offline sorted bound
    measured in the same rounds."""
    systems = ["batcher FIFO sum", "batcher FIFO padded", "batcher padded grouped", "batcher measured"]
    if flyte_ref.load().module is not None:
        systems.insert(0, "flyte FIFO sum")
    # Open loop only: there the default cap of 256 records closes batches of short
    # texts before the budget does (a closed loop of 64 never reaches it).
    uncapped = [system + UNCAPPED for system in ("batcher padded grouped", "batcher measured")]
    lines = []
    for closed in (False, True):
        loop = "closed 64" if closed else "open     "
        tallies = _interleaved(encoder, systems if closed else systems + uncapped, sizes, closed, offline=True)
        bound = statistics.median(tallies[OFFLINE].rates)
        for system, tally in tallies.items():
            lines += _tally_lines(f"{loop} {system:<31}", tally, sizes, None if system == OFFLINE else bound)
    return lines


UNBOUND = " unbound"
UNCAPPED = " uncapped"


def unbound_lines(encoder: Encoder, sizes: Sizes) -> list[str]:
    """Item 4 at equal memory: in the closed loop a sum budget never binds (64 records
    sum to far less), so FIFO sum runs every waiting record as one batch of up to
    64 x 512 padded tokens. Here the padded policies get that much too, so that each
    chooses its batches freely within the same largest batch."""
    systems = ["batcher FIFO sum"] + [
        s + UNBOUND for s in ("batcher FIFO padded", "batcher padded grouped", "batcher measured")
    ]
    tallies = _interleaved(encoder, systems, sizes, closed=True)
    return [line for system, tally in tallies.items() for line in _tally_lines(f"closed 64 {system:<30}", tally, sizes)]


def _tally_lines(label: str, tally: Tally, sizes: Sizes, bound: float | None = None) -> list[str]:
    """One system's line: median throughput and range, real tokens, batches a pass,
    new shapes, largest batch, against ``bound`` if given, a batch's time in the model
    and out of it (the pass's time the model was not running, a batch), GC time,
    measured's picks; then, for ``cost_model="measured"``, a line with its fit."""
    rate = statistics.median(tally.rates)
    against = f"  x bound {rate / bound:5.2f}" if bound else ""
    picks = " ".join(f"{k}:{v}" for k, v in sorted(tally.picks.items()))
    per_batch = 1e3 / max(1, tally.batches)
    line = (
        f"{label} {rate:9.0f} texts/s ({min(tally.rates):.0f}-{max(tally.rates):.0f})  "
        f"eff {tally.real / max(1, tally.padded):6.1%}  batches {tally.batches / sizes.passes:5.0f} "
        f"(new shapes {tally.new_shapes:3d}, largest {tally.peak:5d}){against}  "
        f"model {tally.busy * per_batch:5.2f} + out {(tally.seconds - tally.busy) * per_batch:5.2f} ms/batch  "
        f"gc {tally.gc_s / sizes.passes * 1e3:5.1f} ms/pass" + (f"  picks {picks}" if picks else "")
    )
    return [line] + ([f"{'':<10}  {fit_text(tally.fitted)}"] if tally.fitted else [])


def fit_text(fitted: FittedCost) -> str:
    """``stats.fitted_cost`` in words: what the batcher found a batch to cost."""
    return (
        f"fitted: a batch {_seconds(fitted.fixed_s)} + {_seconds(fitted.per_record_s)} a record "
        f"+ {_seconds(fitted.per_padded_token_s)} a padded token; a new shape {_seconds(fitted.new_shape_s)} "
        f"more (over {fitted.batches} batches)"
    )


def _seconds(value: float) -> str:
    """``value`` seconds to 3 significant digits, in ms, µs or ns."""
    scale, unit = next((s, u) for s, u in ((1e3, "ms"), (1e6, "µs"), (1e9, "ns")) if value * s >= 1 or u == "ns")
    text = f"{value * scale:.3g}"
    return f"{text if 'e' not in text else f'{value * scale:.0f}'} {unit}"


PARTS = ("threads", "modes", "batching", "unbound")
#: The parts a plain run makes (284 s on an H200, run 9).
DEFAULT_PARTS = PARTS[:3]


def report(
    quick: bool = False,
    device: str = "auto",
    parts: Sequence[str] = DEFAULT_PARTS,
    models: Sequence[str] = (),
    freeze: bool = True,
    passes: int | None = None,
    mode_rounds: int | None = None,
    brief: bool = False,
) -> Iterator[str]:
    """Workload G, line by line as it is measured (one line saying why, without a CUDA
    device). With ``freeze``, everything built before the runs (torch, the model) is
    frozen out of the cyclic GC, as README's "Running on a GPU" advises: a full
    collection over it takes 80-170 ms, longer than a pass of the small model."""
    import torch

    if device == "auto":
        if not torch.cuda.is_available():
            yield SKIPPED
            return
        device = "cuda"
    sizes = _sizes(quick, brief, passes, mode_rounds)
    yield _header(torch, device, sizes, freeze)
    began = time.perf_counter()
    for model_name, (*shape, texts) in sizes.models.items():
        if not models or model_name.split()[0] in models:
            yield from _model_lines(model_name, (shape[0], shape[1], shape[2], texts), device, sizes, parts, freeze)
            yield f"   (done at {time.perf_counter() - began:.0f} s)"
    if device == "cuda":
        torch.cuda.empty_cache()


def _sizes(quick: bool, brief: bool, passes: int | None, mode_rounds: int | None) -> Sizes:
    """``QUICK``, ``BRIEF`` or ``FULL`` (in that order), with ``passes`` and ``mode_rounds`` if given."""
    sizes = QUICK if quick else BRIEF if brief else FULL
    return replace(sizes, passes=passes or sizes.passes, mode_rounds=mode_rounds or sizes.mode_rounds)


def _model_lines(
    name: str, shape: tuple[int, int, int, int], device: str, sizes: Sizes, parts: Sequence[str], freeze: bool
) -> Iterator[str]:
    """One model's parts, each followed by the seconds it took."""
    lengths = corpus_lengths(shape[3])
    encoder = Encoder(shape[:3], device, lengths)
    encoder.embed(list(range(PRODUCERS)))
    if freeze:
        gc.collect()
        gc.freeze()
    yield f"== {name}: {shape[3]} texts, tokens median {statistics.median(lengths):g} max {max(lengths)}"
    functions = (thread_lines, mode_lines, batching_lines, unbound_lines)
    try:
        for part in [part for part_name, part in zip(PARTS, functions, strict=True) if part_name in parts]:
            started = time.perf_counter()
            for line in part(encoder, sizes):
                yield f"   {line}"
            yield f"   ({part.__name__} took {time.perf_counter() - started:.0f} s)"
    finally:
        del encoder
        gc.unfreeze()
        gc.collect()


def _header(torch: Any, device: str, sizes: Sizes, freeze: bool) -> str:
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    return (
        f"G  BERT-style encoders, random weights, on {name}; torch {torch.__version__} "
        f"({torch.get_num_threads()} CPU threads); anyio {_version('anyio')}; budget {sizes.budget}; "
        f"{sizes.warm_passes} warm and {sizes.passes} timed passes, {sizes.mode_rounds} rounds of modes; "
        f"gc.freeze() {'after loading each model' if freeze else 'not used'}"
    )


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def run(quick: bool = False, device: str = "auto") -> str:
    """Workload G as ``python -m benchmarks --gpu`` runs it (``--brief``): the report as
    text (a line saying why, without a CUDA device)."""
    return "\n".join(report(quick, device, brief=True))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model and 256 texts: checks the code")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto", help="auto: cuda, else skip")
    parser.add_argument(
        "--parts", nargs="+", choices=PARTS, default=DEFAULT_PARTS, help="which parts to run (all but unbound)"
    )
    parser.add_argument("--models", nargs="+", choices=("small", "large"), default=(), help="which models (both)")
    parser.add_argument("--no-freeze", action="store_true", help="leave the model's objects to the cyclic GC")
    parser.add_argument("--passes", type=int, help=f"timed passes of each policy ({FULL.passes})")
    parser.add_argument("--mode-rounds", type=int, help=f"rounds of each mode and the bare model ({FULL.mode_rounds})")
    parser.add_argument("--brief", action="store_true", help="one warm and one timed pass, one round: about 3 minutes")
    args = parser.parse_args(argv)
    lines = report(
        args.quick, args.device, args.parts, args.models, not args.no_freeze, args.passes, args.mode_rounds, args.brief
    )
    for line in lines:
        print(line, flush=True)


if __name__ == "__main__":
    main()
