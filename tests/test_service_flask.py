"""examples/service_flask.py: a Flask app on waitress, its request threads sharing
one model through a SyncBatcher."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from examples.service_flask import MAX_TEXT_CHARS, HashEmbedder, post_all, serving


def test_concurrent_requests_are_answered_and_batched() -> None:
    texts = [f"text {i} " * (1 + i % 13) for i in range(200)]
    with serving(host="127.0.0.1", port=0) as service:
        embeddings = post_all(service.url, texts, concurrency=200)
        stats = httpx.get(f"{service.url}/stats", timeout=10).json()
    assert embeddings == [HashEmbedder.vector(text) for text in texts]
    assert stats["total_completed"] == 200
    assert stats["total_batches"] < 200  # requests were batched
    assert not service.batcher.is_running


def test_a_request_without_text_is_refused() -> None:
    deep = "[" * 100_000 + "]" * 100_000  # past the JSON parser's recursion limit
    with serving() as service:
        for body in (json.dumps({"txt": "hi"}), json.dumps(["hi"]), json.dumps({"text": 3}), deep):
            headers = {"content-type": "application/json"}
            response = httpx.post(f"{service.url}/embed", content=body, headers=headers, timeout=10)
            assert response.status_code == 400
            assert response.json() == {"error": 'send JSON {"text": "..."}'}
        assert service.batcher.stats.total_submitted == 0


def test_a_text_the_model_cannot_read_is_refused_before_it_joins_a_batch() -> None:
    too_long = "x" * (MAX_TEXT_CHARS + 1)
    with serving() as service:
        for body in ('{"text": "\\ud800"}', json.dumps({"text": too_long})):  # a lone surrogate, escaped
            headers = {"content-type": "application/json"}
            response = httpx.post(f"{service.url}/embed", content=body, headers=headers, timeout=10)
            assert response.status_code == 400
            assert response.json() == {"error": f"send valid Unicode text of at most {MAX_TEXT_CHARS} characters"}
        assert service.batcher.stats.total_submitted == 0


def test_leaving_the_block_stops_the_server_and_its_threads() -> None:
    before = set(threading.enumerate())
    with serving() as service:
        assert httpx.post(f"{service.url}/embed", json={"text": "hi"}, timeout=10).status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"{service.url}/embed", json={"text": "hi"}, timeout=10)
    assert set(threading.enumerate()) <= before


def test_leaving_the_block_answers_every_request_received(monkeypatch: pytest.MonkeyPatch) -> None:
    gate, embed = threading.Event(), HashEmbedder.embed

    def held(self: HashEmbedder, texts: list[str]) -> Any:
        assert gate.wait(10)
        return embed(self, texts)

    monkeypatch.setattr(HashEmbedder, "embed", held)
    texts = [f"text {i}" for i in range(20)]
    deadline = time.monotonic() + 10
    with ThreadPoolExecutor(1) as pool:
        block = serving()
        service = block.__enter__()
        answers = pool.submit(post_all, service.url, texts, 20)
        while service.batcher.stats.total_submitted < len(texts):  # every request is in the batcher
            assert time.monotonic() < deadline
            time.sleep(0.01)
        leaving = threading.Thread(target=block.__exit__, args=(None, None, None))
        leaving.start()
        while True:  # until the server no longer takes connections: it is stopping
            assert time.monotonic() < deadline
            try:
                httpx.get(f"{service.url}/stats", timeout=10)
            except httpx.ConnectError:
                break
        gate.set()
        assert answers.result(timeout=10) == [HashEmbedder.vector(text) for text in texts]
        leaving.join(timeout=10)
        assert not leaving.is_alive()


def test_the_server_stops_even_if_its_wake_up_pipe_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    """CI once saw waitress's wake-up pipe closed under a stopping server (EBADF);
    the loop then sees the stop at its next poll."""
    import errno

    import waitress.trigger  # type: ignore[import-untyped, unused-ignore]

    def broken(self: object) -> None:
        raise OSError(errno.EBADF, "Bad file descriptor")

    before = set(threading.enumerate())
    block = serving()
    service = block.__enter__()
    assert httpx.post(f"{service.url}/embed", json={"text": "hi"}, timeout=10).status_code == 200
    monkeypatch.setattr(waitress.trigger.trigger, "_physical_pull", broken)
    leaving = threading.Thread(target=block.__exit__, args=(None, None, None))
    leaving.start()
    leaving.join(timeout=10)
    assert not leaving.is_alive(), "the server did not stop"
    assert set(threading.enumerate()) <= before
