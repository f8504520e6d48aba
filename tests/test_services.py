"""The HTTP services of the examples, each started as a real server on 127.0.0.1
on a free port in a thread of its own, driven with httpx, and always stopped:
FastAPI on uvicorn (asyncio) and Quart-Trio on Hypercorn (trio)."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import trio
import uvicorn

from batcher import TokenBatcher
from examples import service_fastapi, service_trio
from examples.service_fastapi import hash_vector, simulated_embed

REQUESTS = 500


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    # Room in the accept queue for every connection the tests open at once (up to
    # 200): with 128, under load, a connection now and then was reset (httpx.ReadError).
    sock.listen(1024)
    return sock


@contextmanager
def fastapi_server(
    loop: str = "asyncio", **settings: Any
) -> Iterator[tuple[str, TokenBatcher[str, Any], Callable[[], None]]]:
    """Serve the FastAPI example on uvicorn's ``loop`` ("asyncio" or "uvloop", which
    uvicorn picks when it is installed); yield its URL, its batcher, and a function
    that begins a graceful stop. The server is stopped and joined on the way out."""
    app = service_fastapi.create_app(**settings)
    config = uvicorn.Config(
        app, loop=loop, log_level="warning", lifespan="on", timeout_keep_alive=service_fastapi.KEEP_ALIVE_S
    )
    server = uvicorn.Server(config)
    sock = free_socket()
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(1000):  # up to 10 s for the lifespan to start the batcher
            if server.started or not thread.is_alive():
                break
            threading.Event().wait(0.01)
        assert server.started, "the server did not start"

        def stop() -> None:
            server.should_exit = True

        yield f"http://127.0.0.1:{sock.getsockname()[1]}", app.state.batcher, stop
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
    assert not thread.is_alive(), "the server did not stop"


@contextmanager
def trio_server(**settings: Any) -> Iterator[tuple[str, TokenBatcher[str, Any], Callable[[], None]]]:
    """Serve the Quart-Trio example on Hypercorn's trio worker, as above."""
    app = service_trio.create_app(**settings)
    sock = free_socket()
    port, fd = sock.getsockname()[1], sock.detach()  # hypercorn owns the socket, and closes it
    started, token = threading.Event(), []
    shutdown: list[trio.Event] = []

    async def main() -> None:
        shutdown.append(trio.Event())
        token.append(trio.lowlevel.current_trio_token())

        @app.before_serving
        async def ready() -> None:
            started.set()

        await service_trio.run(app, f"fd://{fd}", shutdown[0])

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()

    def stop() -> None:
        if token and thread.is_alive():
            with suppress(trio.RunFinishedError):  # it was stopped already, and has just ended
                token[0].run_sync_soon(shutdown[0].set)  # from any thread, even another trio run's

    try:
        assert started.wait(10), "the server did not start"
        yield f"http://127.0.0.1:{port}", app.config["batcher"], stop
    finally:
        stop()
        thread.join(timeout=30)
    assert not thread.is_alive(), "the server did not stop"


Server = Callable[..., AbstractContextManager[tuple[str, TokenBatcher[str, Any], Callable[[], None]]]]
SERVERS: dict[str, Server] = {
    "fastapi": fastapi_server,
    "fastapi-uvloop": partial(fastapi_server, "uvloop"),
    "trio": trio_server,
}


async def embed_all(url: str, texts: list[str]) -> list[httpx.Response]:
    responses: list[httpx.Response] = [None] * len(texts)  # type: ignore[list-item]
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def one(index: int) -> None:
            responses[index] = await client.post("/embed", json={"text": texts[index]})

        async with anyio.create_task_group() as tg:
            for index in range(len(texts)):
                tg.start_soon(one, index)
    return responses


def metric(text: str, name: str, **labels: str) -> float:
    selector = ",".join(f'{key}="{value}"' for key, value in labels.items())
    pattern = rf"^{re.escape(name)}{{{re.escape(selector)}}} (\S+)$" if labels else rf"^{re.escape(name)} (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    assert found, f"{name} {labels} not in the metrics"
    return float(found.group(1))


async def slow_embed(texts: list[str]) -> list[list[float]]:
    """The examples' model, 100 ms slower a batch. Requests reach a server in a
    thread of the test's process at only about 70 a second (500 take about 7 s), and
    slower on a loaded machine: against the examples' 10 ms a batch, most batches
    then held one to three requests, and the batching check failed now and then."""
    await anyio.sleep(0.1)
    return await simulated_embed(texts)


@pytest.mark.parametrize("kind", list(SERVERS))
class TestServices:
    async def test_concurrent_requests_are_batched_and_counted(self, kind: str) -> None:
        texts = [f"request {n} " + "word " * (n % 40) for n in range(REQUESTS)]
        with SERVERS[kind](embed=slow_embed) as (url, batcher, _):
            with anyio.fail_after(60):
                responses = await embed_all(url, texts)
                async with httpx.AsyncClient(base_url=url) as client:
                    metrics = (await client.get("/metrics")).text
        assert [response.status_code for response in responses] == [200] * REQUESTS
        assert [response.json()["embedding"] for response in responses] == [hash_vector(text) for text in texts]
        stats = batcher.stats
        assert stats.total_completed == REQUESTS
        assert stats.total_batches < REQUESTS / 2, f"the requests were not batched: {stats.total_batches} batches"
        assert metric(metrics, "batcher_records_total", outcome="ok") == REQUESTS
        assert metric(metrics, "batcher_batches_total", outcome="ok") == stats.total_batches
        assert metric(metrics, "batcher_batch_size_count") == stats.total_batches

    async def test_shed_and_expired_requests_get_503_and_504(self, kind: str) -> None:
        texts = ["x " * 20] * 200
        with SERVERS[kind](max_queued_cost=100) as (url, _, _), anyio.fail_after(60):
            shed = await embed_all(url, texts)
        codes = {response.status_code for response in shed}
        assert codes == {200, 503}, codes
        assert {response.headers.get("retry-after") for response in shed if response.status_code == 503} == {"1"}
        # One at a time, 10 ms each: most of 50 requests wait past 20 ms before dispatch.
        with SERVERS[kind](max_queue_delay_s=0.02, max_batch_size=1) as (url, batcher, _), anyio.fail_after(60):
            late = await embed_all(url, texts[:50])
        codes = {response.status_code for response in late}
        assert 504 in codes
        assert codes <= {200, 504}
        assert [response.status_code for response in late].count(504) == batcher.stats.total_expired

    async def test_stopping_lets_every_accepted_request_finish(self, kind: str) -> None:
        texts = [f"in flight {n}" for n in range(100)]
        # Set, on the server's loop, at the dispatch of the batch holding the last request.
        accepted, served = threading.Event(), list[TokenBatcher[str, Any]]()

        def on_event(_: object) -> None:
            if served and served[0].stats.total_submitted >= len(texts):
                accepted.set()

        with SERVERS[kind](observers=[on_event]) as (url, batcher, stop), anyio.fail_after(60):
            served.append(batcher)
            async with anyio.create_task_group() as tg:
                results: list[list[httpx.Response]] = []

                async def send() -> None:
                    results.append(await embed_all(url, texts))

                tg.start_soon(send)
                assert await anyio.to_thread.run_sync(accepted.wait, 30)
                stop()  # while the last batch is in the model
        assert [response.status_code for response in results[0]] == [200] * len(texts)

    async def test_a_bad_request_is_refused_before_it_joins_a_batch(self, kind: str) -> None:
        """A body that is not a text, a text no encoder reads (a lone surrogate) or one over
        the length limit is answered at once and never queued: in a batch it would fail
        every request of that batch, or be shed as "try again later" for ever."""
        too_long = "x" * (service_fastapi.MAX_TEXT_CHARS + 1)
        bodies: list[Any] = [{"text": 5}, {"text": None}, {}, ["hi"], {"text": "\ud800"}, {"text": too_long}]
        answers = []
        with SERVERS[kind]() as (url, batcher, _), anyio.fail_after(60):
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                for body in bodies:  # json.dumps writes the lone surrogate escaped, as a client's JSON may
                    content, headers = json.dumps(body), {"content-type": "application/json"}
                    answers.append(await client.post("/embed", content=content, headers=headers))
                assert batcher.stats.total_submitted == 0
                ok = await client.post("/embed", json={"text": "fine"})
        assert [answer.status_code for answer in answers] == [422] * len(bodies)
        assert "lone surrogate" in answers[4].text
        assert f"at most {service_fastapi.MAX_TEXT_CHARS} are served" in answers[5].text
        assert len(answers[5].content) < 1000  # the text is not echoed back
        assert ok.json()["embedding"] == hash_vector("fine")

    async def test_a_body_in_no_text_encoding_is_a_bad_request(self, kind: str) -> None:
        """Bytes that are not UTF-8 got a 500 from the Quart-Trio service."""
        with SERVERS[kind]() as (url, batcher, _), anyio.fail_after(60):
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                headers = {"content-type": "application/json"}
                bad = await client.post("/embed", content=b'{"text": "\xff\xfe\xfd"}', headers=headers)
                utf16 = await client.post("/embed", content='{"text": "hi"}'.encode("utf-16"), headers=headers)
                assert batcher.stats.total_submitted <= 1  # (the UTF-16 text, where it is read)
        assert bad.status_code in (400, 422)  # FastAPI: 400, "error parsing the body"
        assert utf16.status_code in (200, 400, 422)

    async def test_a_stop_does_not_wait_for_idle_keep_alive_connections(self, kind: str) -> None:
        """A pooled client keeps its connection open between requests: the Quart-Trio
        service waited out its 30 s graceful_timeout for it."""
        async with httpx.AsyncClient(timeout=30) as client:  # open after the server has stopped
            with SERVERS[kind]() as (url, _, stop):
                assert (await client.post(f"{url}/embed", json={"text": "hi"})).status_code == 200
                stop()
                stopping = time.monotonic()
            stopped_in = time.monotonic() - stopping  # (the server's thread has been joined)
        assert stopped_in < 10  # (20 s short of the graceful timeout: no timing is checked)

    async def test_a_large_or_deep_bad_body_gets_a_short_422(self, kind: str) -> None:
        """Not the body echoed back (pydantic's errors quote their input), nor a 500
        for JSON nested past the parser's recursion limit."""
        big = "x" * 200_000
        contents = [json.dumps({"text": [big]}), json.dumps({"txt": big}), "[" * 100_000 + "]" * 100_000]
        with SERVERS[kind]() as (url, batcher, _), anyio.fail_after(60):
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                headers = {"content-type": "application/json"}
                answers = [await client.post("/embed", content=content, headers=headers) for content in contents]
                assert batcher.stats.total_submitted == 0
        assert [answer.status_code for answer in answers[:2]] == [422, 422]
        assert answers[2].status_code in (400, 422)  # FastAPI: 400, "error parsing the body"
        assert max(len(answer.content) for answer in answers) < 1000


SCRIPTS = {"fastapi": "examples/service_fastapi.py", "trio": "examples/service_trio.py"}
REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("kind", list(SCRIPTS))
def test_ctrl_c_under_load_answers_what_was_accepted_and_exits(kind: str, tmp_path: Path) -> None:
    """The command as a user runs it, stopped with Ctrl-C (SIGINT) while 40 client
    threads keep requests in flight; each sends no new one once the signal is sent.
    The trio service had no handler: the KeyboardInterrupt landed in a request (a 500)
    and the server went on serving, or it exited with a traceback."""
    with free_socket() as sock:
        port = sock.getsockname()[1]  # (closed before the service binds it)
    url = f"http://127.0.0.1:{port}"
    statuses: list[int] = []
    answered, signalled = threading.Event(), threading.Event()

    def keep_asking(client_number: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            for request in range(10_000):
                if signalled.is_set():
                    return
                try:
                    response = client.post("/embed", json={"text": f"{client_number} {request}"})
                except httpx.TransportError:  # refused or closed once it stops
                    return
                statuses.append(response.status_code)
                if len(statuses) >= 200:
                    answered.set()

    with (tmp_path / "output").open("w+") as output:
        process = subprocess.Popen([sys.executable, SCRIPTS[kind], str(port)], cwd=REPO, stdout=output, stderr=output)
        clients = [threading.Thread(target=keep_asking, args=(number,)) for number in range(40)]
        try:
            until_it_answers(url, process)
            for client in clients:
                client.start()
            assert answered.wait(30), "the service answered fewer than 200 requests in 30 s"
            signalled.set()
            process.send_signal(signal.SIGINT)
            process.wait(30)
        finally:
            signalled.set()
            if process.poll() is None:
                process.kill()
                process.wait(30)
            for client in clients:
                if client.ident is not None:
                    client.join(30)
        output.seek(0)
        printed = output.read()
    assert process.returncode == 0, printed
    assert "Traceback" not in printed
    assert set(statuses) == {200}


def until_it_answers(url: str, process: subprocess.Popen[bytes]) -> None:
    for _ in range(600):  # 30 s
        try:
            if httpx.get(f"{url}/metrics", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            assert process.poll() is None, "the service ended"
            time.sleep(0.05)
    raise AssertionError("the service did not answer in 30 s")
