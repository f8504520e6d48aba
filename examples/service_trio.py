"""The embedding service of ``service_fastapi.py`` on trio: Quart-Trio on
Hypercorn's trio worker, with the same routes and answers (a bad body, JSON or
not, gets 422 with a short message).

The batcher runs in the server's own nursery (``batcher.serve``), started before
the server takes requests and stopped after it has finished them, so a stopped
server lets every request it accepted finish. Needs the ``examples`` extra
(Quart-Trio, Hypercorn, prometheus_client)::

    python examples/service_trio.py          # serves on 127.0.0.1:8000 until Ctrl-C
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from quart import Response, request
from quart_trio import QuartTrio

from batcher import BatcherOverloadedError, QueueTimeoutError, TokenBatcher
from batcher.metrics import PrometheusObserver

try:
    from .service_fastapi import KEEP_ALIVE_S, RETRY_AFTER_S, checked_text, simulated_embed
except ImportError:  # run as a script
    from service_fastapi import KEEP_ALIVE_S, RETRY_AFTER_S, checked_text, simulated_embed  # type: ignore[no-redef]


def create_app(embed: Callable[[list[str]], Any] = simulated_embed, **settings: Any) -> QuartTrio:
    """The ASGI app; ``settings`` go to its ``TokenBatcher`` (``observers`` beside its own)."""
    registry = CollectorRegistry()
    options: dict[str, Any] = {"target_batch_tokens": 8_192, "max_batch_size": 128, "max_queued_cost": 200_000}
    observers = [PrometheusObserver(registry), *settings.pop("observers", ())]
    batcher = TokenBatcher(embed, observers=observers, **(options | settings))
    app = QuartTrio(__name__)
    app.config["batcher"] = batcher

    @app.before_serving
    async def start_batcher() -> None:
        await app.nursery.start(batcher.serve)

    @app.after_serving
    async def stop_batcher() -> None:
        await batcher.stop()  # every request has been answered: this drains nothing

    @app.post("/embed")
    async def embed_text() -> Any:
        try:  # (json reads UTF-8, -16 and -32; Quart's get_json answered 500 to bytes not in its encoding)
            body = json.loads(await request.get_data())
        except (ValueError, RecursionError):  # not JSON, not text, or nested too deep to parse
            body = None
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str):
            return {"detail": 'send JSON {"text": "..."}'}, 422
        try:
            text = checked_text(text)
        except ValueError as exc:
            return {"detail": str(exc)}, 422
        try:
            return {"embedding": await batcher.call(text)}
        except BatcherOverloadedError:
            return {"detail": "overloaded; try again later"}, 503, {"Retry-After": RETRY_AFTER_S}
        except QueueTimeoutError:
            return {"detail": "the request waited too long for the model"}, 504

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    return app


def shielded_sends(app: Any) -> Any:
    """``app`` with each HTTP message it sends shielded from cancellation.

    Quart-Trio cancels a request's task as soon as its response is sent, and with it
    Hypercorn's bookkeeping in that send: the connection, now idle, was never marked
    so, and a stop waited out ``graceful_timeout`` (30 s) for every idle keep-alive
    connection (a pooled client's) instead of closing it. Hypercorn shields the
    writes to the socket itself; this shields the rest of the send."""

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        async def shielded(message: Any) -> None:
            with trio.CancelScope(shield=True):
                await send(message)

        await app(scope, receive, shielded if scope["type"] == "http" else send)

    return wrapped


async def run(app: QuartTrio, bind: str, shutdown: trio.Event | None = None) -> None:
    """Serve ``app`` on ``bind`` (``host:port``, or ``fd://N``) until ``shutdown`` is
    set or, without one, until Ctrl-C or SIGTERM: then it stops taking connections
    and answers every request it has accepted (a second Ctrl-C interrupts that)."""
    config = Config()
    config.bind = [bind]
    config.graceful_timeout = 30
    config.keep_alive_timeout = KEEP_ALIVE_S  # longer than pooled clients keep theirs
    trigger = until_signalled if shutdown is None else shutdown.wait
    await serve(shielded_sends(app), config, shutdown_trigger=trigger)


async def until_signalled() -> None:
    """Return at the first Ctrl-C or SIGTERM; from then on, Python's own handling is back.

    Without it, Ctrl-C raised KeyboardInterrupt in whichever task ran: as often in a
    request (answered 500) as in the server, which then went on serving."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            return


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    port = int(args[0]) if args else 8000
    trio.run(run, create_app(), f"127.0.0.1:{port}")


if __name__ == "__main__":
    main()
