"""What a Prometheus scrape of a batcher under overload shows.

200 clients send 20 requests each to a simulated model (2 ms a call plus 2 µs a
token) through a TokenBatcher with ``max_queued_cost=20_000``: more than the model
can take, so some requests are shed (``BatcherOverloadedError``, what a service
answers with 503). A ``PrometheusObserver`` on its own registry records every batch
and record; at the end the script prints the scrape's main lines (``--all`` prints
every line). Needs the ``prometheus`` extra: ``pip install -e ".[prometheus]"``.
Run it under asyncio (default) or trio: ``python examples/metrics_scrape.py trio``.
"""

from __future__ import annotations

import random
import sys

import anyio

from batcher import BatcherOverloadedError, BatchStats, Prompt, TokenBatcher
from batcher.metrics import PrometheusObserver

WORDS = "the quick brown fox jumps over a lazy dog while models answer prompts in batches".split()

#: The lines printed without ``--all``: one or two of each kind of metric.
SELECTED = (
    'batcher_queue_wait_seconds_bucket{batcher="embed",le="0.008"}',
    "batcher_queue_wait_seconds_count",
    "batcher_batch_duration_seconds_sum",
    'batcher_batch_size_bucket{batcher="embed",le="64.0"}',
    'batcher_batch_fill_ratio_bucket{batcher="embed",le="0.9"}',
    "batcher_queue_depth",
    "batcher_batches_in_flight",
    "batcher_records_total",
    "batcher_batches_total",
)


async def simulated_model(batch: list[Prompt]) -> list[int]:
    await anyio.sleep(0.002 + 2e-6 * sum(prompt.estimate_tokens() for prompt in batch))
    return [len(prompt.text) for prompt in batch]


async def run(clients: int, requests_per_client: int, observer: PrometheusObserver) -> BatchStats:
    rng = random.Random(0)
    async with TokenBatcher(
        simulated_model, target_batch_tokens=4_096, max_queued_cost=20_000, observers=[observer]
    ) as batcher:

        async def client() -> None:
            for _ in range(requests_per_client):
                text = " ".join(rng.choices(WORDS, k=rng.randint(3, 300)))
                try:
                    assert await batcher.call(Prompt(text)) == len(text)
                except BatcherOverloadedError:
                    pass  # a service answers 503 here

        async with anyio.create_task_group() as tg:
            for _ in range(clients):
                tg.start_soon(client)
    return batcher.stats


def main(
    clients: int = 200, requests_per_client: int = 20, backend: str = "asyncio", everything: bool = False
) -> tuple[BatchStats, list[str]]:
    """Run the clients, print the scrape's lines (the selected ones unless ``everything``)
    and return the stats and the lines printed."""
    try:
        from prometheus_client import CollectorRegistry, generate_latest
    except ImportError as error:
        raise SystemExit('this example needs the prometheus extra: pip install -e ".[prometheus]"') from error

    registry = CollectorRegistry()
    observer = PrometheusObserver(registry=registry, labels={"batcher": "embed"})
    stats = anyio.run(run, clients, requests_per_client, observer, backend=backend)
    scrape = generate_latest(registry).decode().splitlines()
    lines = [line for line in scrape if not line.startswith("#")]
    if not everything:
        lines = [line for line in lines if line.startswith(SELECTED)]
    print("\n".join(lines))
    print(f"# {stats.total_completed} served, {stats.total_shed} shed, {stats.total_batches} batches")
    return stats, lines


if __name__ == "__main__":
    args = sys.argv[1:]
    main(backend=next((a for a in args if a in ("asyncio", "trio")), "asyncio"), everything="--all" in args)
