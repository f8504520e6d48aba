"""An embedding service on FastAPI and uvicorn (asyncio), with a TokenBatcher
started in the app's lifespan and its metrics in Prometheus text format.

``POST /embed`` with ``{"text": "..."}`` answers ``{"embedding": [...]}``, or
HTTP 503 with ``Retry-After`` when the batcher sheds the request (``max_queued_cost``) and HTTP 504 when
the request waited in the queue past its deadline (``max_queue_delay_s``) without
reaching the model. A body that is not such a text, a text the model could not read
(a lone surrogate) or one over ``MAX_TEXT_CHARS`` gets HTTP 422 before it is queued
(with pydantic's error list, less the input it quotes):
one bad record would otherwise fail the whole batch it joins, and a text that can
never fit the queue would be answered 503 whenever its client retried.
``GET /metrics`` serves the batcher's metrics. Stopping the server lets every
request it accepted finish: uvicorn waits for them, then the lifespan leaves
``async with batcher``, which drains what is queued.

The model is a stand-in shaped like a real one (10 ms a call plus 1 µs a padded
token; unit vectors from each text's hash); ``--minilm`` embeds with
all-MiniLM-L6-v2 instead (in a worker thread). Needs the ``examples`` extra
(FastAPI, uvicorn, prometheus_client, and torch for ``--minilm``)::

    python examples/service_fastapi.py             # serves on 127.0.0.1:8000
    python examples/service_fastapi.py --minilm 8001
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import uvicorn
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel

from batcher import BatcherOverloadedError, QueueTimeoutError, TokenBatcher
from batcher.metrics import PrometheusObserver

#: Idle connections stay open this long, longer than pooled clients keep theirs (httpx:
#: 5 s, uvicorn's own default). A server that closes first races the client's next
#: request on that connection, which then fails with "connection reset by peer".
KEEP_ALIVE_S = 75


#: Seconds a shed client is told to wait before it tries again (503's ``Retry-After``).
RETRY_AFTER_S = "1"

#: The longest text served, in characters: about 8,000 tokens, a whole batch.
MAX_TEXT_CHARS = 32_000


def checked_text(text: str) -> str:
    """``text``, if the model can read it: at most ``MAX_TEXT_CHARS`` characters, and
    valid Unicode (JSON may carry a lone surrogate, which no encoder accepts).

    :raises ValueError: saying what is wrong
    """
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(f"text is {len(text)} characters long; at most {MAX_TEXT_CHARS} are served")
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ValueError("text is not valid Unicode (it holds a lone surrogate)") from None
    return text


class EmbedRequest(BaseModel):
    text: str


def hash_vector(text: str, dim: int = 16) -> list[float]:
    """A unit vector derived from the text's hash: what the stand-in model answers."""
    raw = [byte - 127.5 for byte in hashlib.blake2b(text.encode(), digest_size=dim).digest()]
    norm = sum(x * x for x in raw) ** 0.5
    return [x / norm for x in raw]


async def simulated_embed(texts: list[str]) -> list[list[float]]:
    """The stand-in model, awaited on the event loop (it sleeps instead of computing)."""
    padded_tokens = len(texts) * max(len(text) // 4 + 1 for text in texts)
    await anyio.sleep(0.01 + 1e-6 * padded_tokens)
    return [hash_vector(text) for text in texts]


def minilm_embed() -> Callable[[list[str]], list[list[float]]]:
    """all-MiniLM-L6-v2, a plain function the batcher runs in a worker thread."""
    from embed_minilm import MiniLM  # beside this file; torch and transformers

    model = MiniLM()
    return lambda texts: [vector.tolist() for vector in model.embed(texts)]


def create_app(embed: Callable[[list[str]], Any] = simulated_embed, **settings: Any) -> FastAPI:
    """The ASGI app; ``settings`` go to its ``TokenBatcher`` (``observers`` beside its own)."""
    registry = CollectorRegistry()
    options: dict[str, Any] = {"target_batch_tokens": 8_192, "max_batch_size": 128, "max_queued_cost": 200_000}
    observers = [PrometheusObserver(registry), *settings.pop("observers", ())]
    batcher = TokenBatcher(embed, observers=observers, **(options | settings))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with batcher:  # leaving it processes every record still queued
            yield

    app = FastAPI(lifespan=lifespan)
    app.state.batcher = batcher

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Pydantic's errors without the input they quote, which may be a body of any size.
        errors = [{key: error[key] for key in ("type", "loc", "msg") if key in error} for error in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.post("/embed")
    async def embed_text(request: EmbedRequest) -> dict[str, list[float]]:
        try:
            text = checked_text(request.text)
        except ValueError as exc:  # answered here, not by pydantic, which would echo the text back
            raise HTTPException(422, str(exc)) from None
        try:
            return {"embedding": await batcher.call(text)}
        except BatcherOverloadedError:
            raise HTTPException(503, "overloaded; try again later", {"Retry-After": RETRY_AFTER_S}) from None
        except QueueTimeoutError:
            raise HTTPException(504, "the request waited too long for the model") from None

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    embed = minilm_embed() if "--minilm" in args else simulated_embed
    ports = [arg for arg in args if arg.isdigit()]
    port = int(ports[0]) if ports else 8000
    uvicorn.run(create_app(embed), host="127.0.0.1", port=port, timeout_keep_alive=KEEP_ALIVE_S)


if __name__ == "__main__":
    main()
