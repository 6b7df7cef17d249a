"""Pure ASGI middleware (no BaseHTTPMiddleware: it would buffer streaming responses)."""

import asyncio
import contextlib
import logging
from collections.abc import Iterable

import anyio
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import (
    NO_STORE,
    SECURITY_HEADERS,
    error_response,
    sentence_for,
)

logger = logging.getLogger("chatgate.http")
SHUTDOWN_WAIT_SECONDS = 10


class BodySizeLimit:
    """413 for bodies over `max_bytes`, whether announced by Content-Length or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            response = error_response(413, sentence_for(413), self._detail())
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI re-raises HTTPException from body reading; the handler shapes it.
                    raise HTTPException(413, self._detail())
            return message

        await self.app(scope, limited_receive, send)

    def _detail(self) -> str:
        return f"The limit is {self.max_bytes} bytes."


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class EnvelopeCORSMiddleware(CORSMiddleware):
    """Starlette's CORS, with a refused preflight in the error envelope instead of plain text."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        headers = {
            k: v for k, v in response.headers.items() if k not in {"content-length", "content-type"}
        }
        reason = bytes(response.body).decode(errors="replace")
        return error_response(
            response.status_code, "This cross-origin request is not allowed.", reason, headers
        )


class InFlight:
    """Requests being handled, so that shutdown can wait for them before closing
    the database and the assistant's client under them."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self, seconds: float = SHUTDOWN_WAIT_SECONDS) -> None:
        """Until no request is in flight, or `seconds` have passed.

        uvicorn waits for requests itself, unless --timeout-graceful-shutdown
        cuts them: then it cancels them and starts the shutdown while they are
        still unwinding, and a cut stream still has its partial reply to store.
        """
        if self.count:
            logger.info("waiting for %d request(s) to finish before closing", self.count)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), seconds)


class ClientGoneMiddleware:
    """A client that hangs up mid-stream is not a server error.

    FastAPI's SSE writer raises BrokenResourceError (in an ExceptionGroup) when
    the client has gone while an event was being sent; after the response has
    started there is nobody to answer, so it is logged quietly, not as a 500.
    Being around every request, it also counts them for shutdown (InFlight).
    """

    def __init__(self, app: ASGIApp, in_flight: InFlight) -> None:
        self.app = app
        self.in_flight = in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        self.in_flight.enter()
        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if not (started and _client_gone(exc)):
                raise
            logger.info("client went away during %s %s", scope["method"], scope["path"])
        finally:
            self.in_flight.leave()


def _client_gone(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_client_gone(inner) for inner in exc.exceptions)
    return isinstance(exc, anyio.BrokenResourceError | anyio.ClosedResourceError)


def _raw(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [
        (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()
    ]


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every response, and `Cache-Control: no-store` to every
    one that sets no caching of its own, except under `cacheable_prefix` (static assets).

    Outermost, so CORS preflights, 413s and 429s get them too; Starlette sends a 500
    outside every middleware, so app/errors.py adds them to it. The headers are
    encoded once here: this runs on every request.
    """

    def __init__(self, app: ASGIApp, cacheable_prefix: str | None = None) -> None:
        self.app = app
        self.cacheable_prefix = cacheable_prefix
        self._always = _raw(SECURITY_HEADERS)
        self._no_store = self._always + _raw(NO_STORE)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        prefix = self.cacheable_prefix
        static = prefix is not None and scope["path"].startswith(prefix)
        always, no_store = self._always, self._no_store

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers", ())
                extra = always if static or _sets_caching(headers) else no_store
                # A new list: the response's own raw_headers may outlive this request.
                message["headers"] = [*headers, *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _sets_caching(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    return any(name == b"cache-control" for name, _ in headers)
