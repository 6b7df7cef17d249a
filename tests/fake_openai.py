"""A small OpenAI-compatible chat-completions server for tests and for trying chatgate.

The requested `model` picks the behaviour:

- `echo-words` (or anything else): streams "You said: <last user message>" word by word;
- `slow`: the same, with 50 ms between chunks;
- `error-500`: answers HTTP 500;
- `malformed`: sends one good chunk, then a chunk that is not JSON;
- `hang`: sends one chunk, then nothing for 30 s (longer than a test's read timeout);
- `cut`: sends one chunk, then closes the connection mid-stream;
- `pause`: sends one chunk, then waits until the test sets `recorder.resume`
  (at most 30 s) before the rest;
- `split-emoji`: the words, then an emoji whose UTF-16 surrogate pair is split
  over two chunks (JSON "\\ud83d", then "\\ude00");
- `lone-surrogate`: the words, then halves of surrogate pairs that pair with
  nothing (in the middle of a chunk, at its end, and ending the reply).

Run it by hand: `python -m tests.fake_openai --port 8055`, then start chatgate
with ASSISTANT_PROVIDER=openai OPENAI_BASE_URL=http://127.0.0.1:8055/v1
OPENAI_MODEL=slow.
"""

import argparse
import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


class Recorder:
    """What the fake saw: request bodies, and how many streams ran at once."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        # Set by a test (from its own thread) to let the `pause` model go on.
        self.resume = threading.Event()


# What some models send after the words: halves of UTF-16 surrogate pairs, as a
# provider's JSON may carry them ("\ud83d" is valid JSON, and json.loads keeps it).
TAILS = {
    "split-emoji": [" \ud83d", "\ude00"],
    "lone-surrogate": [" a\udc00b c\ud800", " d\udbff"],
}
PAUSE_SECONDS = 30


def _chunk(content: str) -> bytes:
    body = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": "fake",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
    }
    return f"data: {json.dumps(body)}\n\n".encode()


def build_app(recorder: Recorder | None = None) -> Starlette:
    recorder = recorder or Recorder()

    async def completions(request: Request) -> Response:
        body = await request.json()
        recorder.requests.append(body)
        model = body.get("model", "")
        if model == "error-500":
            return JSONResponse({"error": {"message": "boom"}}, status_code=500)
        last = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
        words = f"You said: {last}".split(" ")

        async def stream() -> AsyncIterator[bytes]:
            recorder.in_flight += 1
            recorder.max_in_flight = max(recorder.max_in_flight, recorder.in_flight)
            try:
                for index, word in enumerate(words):
                    yield _chunk(word if index == 0 else " " + word)
                    if model == "slow":
                        await asyncio.sleep(0.05)
                    if model == "malformed":
                        yield b"data: {not json\n\n"
                        return
                    if model == "hang":
                        await asyncio.sleep(30)
                    if model == "cut":
                        raise RuntimeError("connection cut by the fake")
                    if model == "pause" and index == 0:
                        await _wait_for(recorder.resume, PAUSE_SECONDS)
                for tail in TAILS.get(model, []):
                    yield _chunk(tail)
                yield b"data: [DONE]\n\n"
            finally:
                recorder.in_flight -= 1

        return StreamingResponse(stream(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])
    app.state.recorder = recorder
    return app


async def _wait_for(event: threading.Event, seconds: float) -> None:
    """Until another thread sets `event`, without a thread per waiter."""
    deadline = time.monotonic() + seconds
    # The event is set from the test's thread: there is nothing to await.
    while not event.is_set() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)


class FakeOpenAIServer:
    """The fake on a free loopback port, served from its own thread and event loop."""

    def __init__(self) -> None:
        self.recorder = Recorder()
        config = uvicorn.Config(
            build_app(self.recorder), host="127.0.0.1", port=0, log_level="critical"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> "FakeOpenAIServer":
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the fake OpenAI server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *_: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    @property
    def base_url(self) -> str:
        port = self._server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8055)
    args = parser.parse_args()
    uvicorn.run(build_app(), host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
