"""An embedding service: a Flask app on a threaded WSGI server (waitress) whose
request threads share one model through a SyncBatcher.

``POST /embed`` with ``{"text": "..."}`` answers ``{"embedding": [...]}``;
``GET /stats`` answers the batcher's statistics. Each request thread calls
``batcher.call(text)`` and blocks; the batcher runs the model once for all the
requests that arrived meanwhile. The model is a stand-in, cheap and
deterministic, shaped like a real one: one call embeds a padded batch.

``python examples/service_flask.py [port]`` serves on 127.0.0.1 (port 8000) until
Ctrl-C; ``main(requests=200)`` serves on a free port, sends that many concurrent
requests, checks every answer and returns the statistics.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from typing import Any, NamedTuple

import httpx
import waitress  # type: ignore[import-untyped, unused-ignore]
from flask import Flask, request
from waitress import wasyncore  # type: ignore[import-untyped, unused-ignore]

from batcher import BatchStats, SyncBatcher, TokenBatcher

REQUEST_TIMEOUT_S = 10.0
MAX_TEXT_CHARS = 32_000  # about 8,000 tokens: a whole batch
POLL_S = 0.5  # the longest a stopping server's loop sleeps before it sees the stop


class HashEmbedder:
    """Stands in for an embedding model: one call embeds a whole batch, padded to
    its longest text as a transformer computes it (10 ms a call plus 1 µs a padded
    token), into unit vectors derived from each text's hash."""

    dim = 16

    def embed(self, texts: list[str]) -> list[list[float]]:
        padded_tokens = len(texts) * max(len(text) // 4 + 1 for text in texts)
        time.sleep(0.01 + 1e-6 * padded_tokens)  # the forward pass
        return [self.vector(text) for text in texts]

    @classmethod
    def vector(cls, text: str) -> list[float]:
        digest = hashlib.blake2b(text.encode(), digest_size=cls.dim).digest()
        raw = [byte - 127.5 for byte in digest]
        norm = sum(x * x for x in raw) ** 0.5
        return [x / norm for x in raw]


def create_app(batcher: SyncBatcher[str, list[float]]) -> Flask:
    """The WSGI app: its views run in the server's threads and call the batcher."""
    app = Flask(__name__)

    @app.post("/embed")
    def embed() -> Any:
        try:
            body = request.get_json(silent=True)
        except RecursionError:  # JSON nested too deep to parse: a bad body like any other
            body = None
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str):
            return {"error": 'send JSON {"text": "..."}'}, 400
        if len(text) > MAX_TEXT_CHARS or not _valid_unicode(text):  # else it would fail its whole batch
            return {"error": f"send valid Unicode text of at most {MAX_TEXT_CHARS} characters"}, 400
        try:
            return {"embedding": batcher.call(text, timeout=REQUEST_TIMEOUT_S)}
        except TimeoutError:
            return {"error": "the model is busy; try again"}, 503, {"Retry-After": "1"}

    @app.get("/stats")
    def stats() -> Any:
        return dataclasses.asdict(batcher.stats)

    return app


def _valid_unicode(text: str) -> bool:
    # JSON may carry a lone surrogate, which no encoder (nor the model's tokenizer) accepts.
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


class Service(NamedTuple):
    url: str
    batcher: SyncBatcher[str, list[float]]


@contextmanager
def serving(
    host: str = "127.0.0.1", port: int = 0, *, threads: int = 32, backend: str = "asyncio"
) -> Iterator[Service]:
    """Serve the app on ``host:port`` (``0``: a free port) while the block runs;
    then stop the server, which first answers every request it has received, and
    the batcher."""
    model = TokenBatcher(HashEmbedder().embed, target_batch_tokens=8_192, max_batch_size=64, cost_model="padded")
    with SyncBatcher(model, backend=backend) as batcher:
        sockets: dict[int, Any] = {}
        server = waitress.create_server(create_app(batcher), map=sockets, host=host, port=port, threads=threads)
        stop = threading.Event()
        loop = threading.Thread(target=_serve_until, args=(server, sockets, stop), name="waitress-loop")
        loop.start()
        try:
            yield Service(f"http://{host}:{server.effective_port}", batcher)
        finally:
            stop.set()
            with suppress(OSError):  # wake the loop now; if its wake-up pipe is gone, its next poll sees `stop`
                server.pull_trigger()
            loop.join()
            server.task_dispatcher.shutdown()


def _serve_until(server: Any, sockets: dict[int, Any], stop: threading.Event) -> None:
    """Waitress's loop, one poll at a time, until ``stop`` is set; then, no longer
    accepting connections, until every request received has been answered (at most
    ``REQUEST_TIMEOUT_S`` more, the longest a request waits for the batcher); then
    close every socket from this thread, the one that owns them. Each poll waits at
    most ``POLL_S``, so the loop stops even when nothing wakes it."""
    while sockets and not stop.is_set():
        wasyncore.loop(timeout=POLL_S, map=sockets, count=1)
    wasyncore.dispatcher.close(server)  # the listening socket alone (its wake-up pipe stays)
    deadline = time.monotonic() + REQUEST_TIMEOUT_S
    while _answering(sockets) and time.monotonic() < deadline:
        wasyncore.loop(timeout=POLL_S, map=sockets, count=1)
    wasyncore.close_all(sockets)


def _answering(sockets: dict[int, Any]) -> bool:
    """Whether a connection has a request in hand or an answer not yet sent."""
    return any(
        getattr(channel, "requests", None) or getattr(channel, "total_outbufs_len", 0) for channel in sockets.values()
    )


def post_all(url: str, texts: list[str], concurrency: int = 200) -> list[list[float]]:
    """POST every text to ``url/embed`` at once, ``concurrency`` at a time; return the embeddings in order."""
    limits = httpx.Limits(max_connections=concurrency)
    with httpx.Client(base_url=url, limits=limits, timeout=30) as client, ThreadPoolExecutor(concurrency) as pool:

        def post(text: str) -> list[float]:
            response = client.post("/embed", json={"text": text})
            response.raise_for_status()
            return list(response.json()["embedding"])

        return list(pool.map(post, texts))


def main(requests: int | None = None, port: int = 8000, backend: str = "asyncio") -> BatchStats | None:
    """Serve until Ctrl-C; with ``requests``, serve on a free port, send that many
    concurrent requests, check the answers, and return the batcher's statistics."""
    if requests is None:
        with serving(port=port, backend=backend) as service:
            print(f"serving on {service.url}; POST /embed with {{'text': ...}}; Ctrl-C stops")
            threading.Event().wait()  # until Ctrl-C
        return None
    texts = [f"request {i} " * (1 + i % 9) for i in range(requests)]
    started = time.perf_counter()
    with serving(backend=backend) as service:
        embeddings = post_all(service.url, texts)
        stats = service.batcher.stats
    elapsed = time.perf_counter() - started
    assert embeddings == [HashEmbedder.vector(text) for text in texts]
    print(f"{requests} requests in {elapsed:.2f} s: {stats.total_batches} batches, avg {stats.avg_batch_size:.1f}")
    return stats


if __name__ == "__main__":
    try:
        main(port=int(sys.argv[1]) if len(sys.argv) > 1 else 8000)
    except KeyboardInterrupt:
        pass
