"""A Ray Serve deployment whose replicas batch with a TokenBatcher instead of
``@serve.batch``: a budget of padded tokens per batch instead of a count, records
of similar length grouped together (``cost_model="padded", group_by_cost=True``),
and a batch sent as soon as the model is free instead of after a timeout.

``POST /embed`` with ``{"text": "..."}`` answers ``{"embedding": [...]}``;
``GET /stats`` answers the statistics of the replica that takes the request (its
batcher's counters and the share of computed tokens that were not padding).

Each replica runs its own app, built on the replica by ``build_app()``, with its
own batcher and model. The batcher lives in the app's lifespan (``async with
batcher: yield``), which Serve runs on the replica's event loop: it starts before
the replica takes its first request (if it fails, the replica fails to start), and
it ends when the replica shuts down, after the requests in flight have finished;
leaving ``async with`` processes whatever is still queued.

Set ``max_ongoing_requests``. Serve sends a replica at most that many requests at a
time (5 by default in Ray 2.60); the rest wait in the proxy or the calling handle.
A batch can hold only requests that reached the replica, so by default no batch has
more than 5 records, whatever its token budget. Set it to at least the batch size
you want, a few hundred (here ``MAX_ONGOING_REQUESTS = 512``), so that the batcher
sees enough concurrent requests and its budget decides the batches.
``num_replicas`` scales out: each replica gets its share of the traffic and batches
that share, so add replicas when one model is saturated, not for bigger batches.

The model is a stand-in shaped like a padded transformer: a call takes 20 ms plus
2 µs per padded token, and answers a small vector per text. Needs Ray Serve
(``pip install "ray[serve]"``, which brings FastAPI) and httpx::

    python examples/ray_serve.py             # 300 requests on 127.0.0.1:8000
    python examples/ray_serve.py 1000 8001   # 1000 requests on port 8001

Run as a script, it starts a local Ray cluster (``ray.init(num_cpus=2,
include_dashboard=False)``), serves the app on 127.0.0.1, sends the requests at
once, prints the throughput and the batch statistics, and shuts Serve and Ray down.
"""

# No "from __future__ import annotations": run as a script, this module is shipped
# to the replicas by value, with only the globals its code names, and FastAPI
# must find the routes' annotations as objects, not as names to look up.
import dataclasses
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import ray
from fastapi import FastAPI
from pydantic import BaseModel
from ray import serve

from batcher import TokenBatcher

#: How many requests Serve lets into one replica at once, which bounds its batches.
MAX_ONGOING_REQUESTS = 512
#: Each replica's budget: no batch computes more padded tokens (records times the longest).
TARGET_BATCH_TOKENS = 4_096
APP_NAME = "batcher-embed"


class EmbedRequest(BaseModel):
    text: str


def estimate_tokens(text: str) -> int:
    """What the batcher prices a text at, and what the stand-in model computes."""
    return len(text) // 4 + 1


def embed_text(text: str) -> list[float]:
    """The stand-in model's answer for one text."""
    return [float(len(text)), float(len(text.split())), float(estimate_tokens(text))]


class SimulatedEmbedder:
    """Stands in for a padded transformer: one call embeds a whole batch, and
    counts the real and the padded tokens it computed."""

    def __init__(self) -> None:
        self.real_tokens = 0
        self.padded_tokens = 0
        self.largest_batch = 0

    async def __call__(self, texts: list[str]) -> list[list[float]]:
        tokens = [estimate_tokens(text) for text in texts]
        padded = len(texts) * max(tokens)
        self.real_tokens += sum(tokens)
        self.padded_tokens += padded
        self.largest_batch = max(self.largest_batch, len(texts))
        await anyio.sleep(0.02 + 2e-6 * padded)  # the forward pass
        return [embed_text(text) for text in texts]


def build_app() -> FastAPI:
    """The app of one replica, with its own batcher and model; Serve calls this on
    each replica as it starts."""
    model = SimulatedEmbedder()
    batcher = TokenBatcher(
        model,
        token_estimator=estimate_tokens,
        target_batch_tokens=TARGET_BATCH_TOKENS,
        max_batch_size=256,
        cost_model="padded",
        group_by_cost=True,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with batcher:  # from before the first request until the replica stops
            yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/embed")
    async def embed(request: EmbedRequest) -> dict[str, list[float]]:
        return {"embedding": await batcher.call(request.text)}

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        efficiency = model.real_tokens / model.padded_tokens if model.padded_tokens else None
        return {
            "batcher": dataclasses.asdict(batcher.stats),
            "padding_efficiency": efficiency,
            "largest_batch": model.largest_batch,
        }

    return app


# Called with no class, serve.ingress makes one whose replicas each run build_app().
Embedder = serve.deployment(name="Embedder", num_replicas=1, max_ongoing_requests=MAX_ONGOING_REQUESTS)(
    serve.ingress(build_app)()
)


def start(port: int = 8000, *, num_replicas: int = 1) -> str:
    """Start Serve with its HTTP proxy on 127.0.0.1:``port`` on the Ray cluster this
    process joined, run the app, and return its URL once every replica is ready."""
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = Embedder.options(num_replicas=num_replicas).bind()
    # No access log: a log line per request would cost more than the stand-in model.
    serve.run(app, name=APP_NAME, route_prefix="/", logging_config={"enable_access_log": False})
    return f"http://127.0.0.1:{port}"


async def post_all(url: str, texts: list[str]) -> list[list[float]]:
    """``POST /embed`` every text at once; the embeddings, in order."""
    embeddings: list[list[float]] = [[] for _ in texts]
    limits = httpx.Limits(max_connections=len(texts))
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def one(index: int) -> None:
            response = await client.post("/embed", json={"text": texts[index]})
            response.raise_for_status()
            embeddings[index] = response.json()["embedding"]

        async with anyio.create_task_group() as tg:
            for index in range(len(texts)):
                tg.start_soon(one, index)
    return embeddings


async def get_stats(url: str) -> dict[str, Any]:
    """``GET /stats`` from one replica."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        response = await client.get("/stats")
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats


def make_texts(count: int) -> list[str]:
    """Texts of 2 to about 200 tokens, lengths mixed in arrival order."""
    return [f"request {n}: " + "word " * (n * 37 % 160) for n in range(count)]


async def run_clients(url: str, requests: int) -> dict[str, Any]:
    """Send ``requests`` texts at once, check every answer, print the throughput and
    the batch statistics, and return the statistics of ``GET /stats``."""
    texts = make_texts(requests)
    started = time.perf_counter()
    embeddings = await post_all(url, texts)
    elapsed = time.perf_counter() - started
    assert embeddings == [embed_text(text) for text in texts], "a wrong answer"
    stats = await get_stats(url)
    counters = stats["batcher"]
    print(
        f"{requests} requests in {elapsed:.2f} s ({requests / elapsed:.0f}/s): "
        f"{counters['total_batches']} batches, {counters['avg_batch_size']:.1f} records "
        f"and {counters['avg_batch_cost']:.0f} padded tokens a batch on average, "
        f"{stats['padding_efficiency']:.0%} of computed tokens real, the largest {stats['largest_batch']} records"
    )
    return stats


def main(requests: int = 300, port: int = 8000) -> dict[str, Any]:
    """Start a local Ray cluster, serve the app on 127.0.0.1:``port``, send
    ``requests`` concurrent requests, print the throughput and the batch statistics,
    and shut Serve and Ray down; return the statistics of ``GET /stats``."""
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        url = start(port)
        try:
            return anyio.run(run_clients, url, requests)
        finally:
            serve.shutdown()  # type: ignore[no-untyped-call]
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main(*(int(arg) for arg in sys.argv[1:3]))
