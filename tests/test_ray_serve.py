"""The Ray Serve recipe (examples/ray_serve.py) on the session's local Ray cluster.

Serve is started once for the module, with its HTTP proxy on 127.0.0.1 and a free
port and one replica of the app, and is always shut down after it. The clients
run under asyncio and under trio; every wait on the service is bounded.
"""

from __future__ import annotations

import socket
import warnings
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

pytest.importorskip("fastapi", reason="needs Ray Serve: pip install 'ray[serve]'")

from pydantic.warnings import PydanticDeprecatedSince20

with warnings.catch_warnings():
    # Ray Serve 2.60 declares its settings with Field(update_type=...), which pydantic 2
    # deprecates; it warns while ray.serve is imported, where no pytest mark applies.
    warnings.filterwarnings(
        "ignore",
        message="Using extra keyword arguments on `Field` is deprecated",
        category=PydanticDeprecatedSince20,
        module=r"ray\.serve\._private\.config",
    )
    serve = pytest.importorskip("ray.serve", reason="needs Ray Serve: pip install 'ray[serve]'")

    from examples import ray_serve

pytestmark = pytest.mark.usefixtures("cluster")

REQUESTS = 200


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    """The app's URL; Serve is shut down after the module, and also when it failed to start."""
    try:
        yield ray_serve.start(free_port())
    finally:
        serve.shutdown()


async def counters(url: str) -> dict[str, Any]:
    stats = await ray_serve.get_stats(url)
    counters: dict[str, Any] = stats["batcher"]
    return counters


class TestService:
    async def test_every_answer_is_right_and_requests_are_batched(self, url: str, anyio_backend: str) -> None:
        texts = [f"{anyio_backend} {n}: " + "word " * (n * 7 % 90) for n in range(REQUESTS)]
        with anyio.fail_after(60):
            before = await counters(url)
            embeddings = await ray_serve.post_all(url, texts)
            after = await counters(url)
            largest = (await ray_serve.get_stats(url))["largest_batch"]
        assert embeddings == [ray_serve.embed_text(text) for text in texts]
        batches = after["total_batches"] - before["total_batches"]
        assert after["total_completed"] - before["total_completed"] == REQUESTS
        assert after["total_failed"] == 0
        assert 0 < batches < REQUESTS  # batched
        # A batch of more than 5 records: what Serve's default max_ongoing_requests (5) rules out.
        assert largest > 5
        # Each batch stays within its budget of padded tokens.
        assert after["total_batch_cost"] - before["total_batch_cost"] <= batches * ray_serve.TARGET_BATCH_TOKENS

    async def test_the_demo_checks_its_answers_and_reports(self, url: str, capsys: pytest.CaptureFixture[str]) -> None:
        with anyio.fail_after(60):
            stats = await ray_serve.run_clients(url, REQUESTS)
        assert f"{REQUESTS} requests in " in capsys.readouterr().out
        assert 0 < stats["padding_efficiency"] <= 1
        assert stats["batcher"]["total_completed"] >= REQUESTS
