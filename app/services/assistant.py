"""Assistant providers: given a conversation, they yield the reply as text deltas."""

import json
import logging
import re
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal, Protocol

import httpx
from httpx_sse import SSEError, aconnect_sse

from app.config import Settings

resource: ModuleType | None
try:
    import resource
except ImportError:  # Windows has no RLIMIT_NOFILE
    resource = None

logger = logging.getLogger("chatgate.assistant")

# A free connection is always there for a reply (the pool has one per allowed reply),
# so waiting for one means something is wrong: fail fast rather than wait in silence.
POOL_WAIT_SECONDS = 1.0
# Open files beyond the replies' sockets: the database, listening sockets, logs.
SPARE_FILES = 256
REPLACEMENT = "\ufffd"


@dataclass(frozen=True, slots=True)
class Turn:
    role: Literal["user", "assistant"]
    content: str


class ProviderError(Exception):
    """The provider could not produce a reply; the message is safe to log, not to show."""


class AssistantProvider(Protocol):
    # The context budget: at most this many of the latest messages (1: the new one
    # only), and at most this many characters of them (the newest always goes).
    context_messages: int
    context_chars: int

    def stream_reply(self, conversation: Sequence[Turn]) -> AsyncGenerator[str]:
        """Yields the reply to the last turn, piece by piece; raises ProviderError."""
        ...

    async def aclose(self) -> None: ...


class EchoAssistant:
    """Offline and deterministic: repeats the user's message, a few words per delta."""

    context_messages = 1
    context_chars = 0

    async def stream_reply(self, conversation: Sequence[Turn]) -> AsyncGenerator[str]:
        text = conversation[-1].content if conversation else ""
        for piece in re.findall(r"\s*\S+\s*|\s+", f"Echo: {text}"):
            yield piece

    async def aclose(self) -> None:
        return None


class OpenAICompatibleAssistant:
    """Any server speaking OpenAI's streaming chat completions: OpenAI, Ollama, vLLM, llama.cpp.

    One httpx client for the life of the app, with its own connect and read
    timeouts; no retries (a half-streamed reply cannot be retried unseen).
    """

    def __init__(self, settings: Settings, client: httpx.AsyncClient | None = None) -> None:
        assert settings.openai_model is not None  # noqa: S101 - Settings refuses otherwise
        self.context_messages = settings.context_max_messages
        self.context_chars = settings.context_max_chars
        self._model = settings.openai_model
        self._system_prompt = settings.system_prompt
        headers = {}
        if settings.openai_api_key is not None:
            headers["Authorization"] = f"Bearer {settings.openai_api_key.get_secret_value()}"
        replies = settings.assistant_max_concurrent_replies
        self._client = client or httpx.AsyncClient(
            base_url=settings.openai_base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(
                settings.openai_read_timeout,
                connect=settings.openai_connect_timeout,
                pool=POOL_WAIT_SECONDS,
            ),
            # One connection per reply chatgate lets run (httpx's default is 100).
            limits=httpx.Limits(max_connections=replies, max_keepalive_connections=replies),
        )

    async def stream_reply(self, conversation: Sequence[Turn]) -> AsyncGenerator[str]:
        """The provider's deltas as well-formed text (see SurrogateMender)."""
        mender = SurrogateMender()
        async with aclosing(self._raw_deltas(conversation)) as deltas:
            async for delta in deltas:
                if text := mender.feed(delta):
                    yield text
        if tail := mender.flush():
            yield tail

    async def _raw_deltas(self, conversation: Sequence[Turn]) -> AsyncGenerator[str]:
        body = {
            "model": self._model,
            "stream": True,
            "messages": [
                {"role": "system", "content": self._system_prompt},
                *({"role": t.role, "content": t.content} for t in conversation),
            ],
        }
        try:
            async with aconnect_sse(self._client, "POST", "chat/completions", json=body) as source:
                if source.response.status_code != 200:
                    raise ProviderError(f"provider answered HTTP {source.response.status_code}")
                async for event in source.aiter_sse():
                    if event.data.strip() == "[DONE]":
                        return
                    delta = _delta_of(event.data)
                    if delta:
                        yield delta
        except httpx.TimeoutException as exc:
            raise ProviderError(f"provider timed out ({type(exc).__name__})") from None
        except (httpx.HTTPError, SSEError) as exc:
            raise ProviderError(f"provider unreachable or broken ({type(exc).__name__})") from None

    async def aclose(self) -> None:
        await self._client.aclose()


def _delta_of(data: str) -> str:
    """The text of one streamed chunk; ProviderError for a chunk that is not one."""
    try:
        chunk: Any = json.loads(data)
        if "error" in chunk:
            raise ProviderError("provider sent an error event")
        choices = chunk["choices"]
        if not choices:
            return ""  # e.g. a final usage-only chunk
        content = choices[0].get("delta", {}).get("content")
    except ProviderError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError):
        raise ProviderError("provider sent a malformed chunk") from None
    if content is not None and not isinstance(content, str):
        raise ProviderError("provider sent a malformed chunk")
    return content or ""


class SurrogateMender:
    """Turns a provider's deltas into text that can be stored and sent as UTF-8.

    JSON escapes text in UTF-16 ("\\ud83d\\ude00" is one emoji), and a provider may
    split a pair across two chunks or send half of one: json.loads keeps those halves
    as lone surrogates. A high half ending a delta waits for the next; a pair is
    joined into its code point; any half left alone becomes U+FFFD.
    """

    def __init__(self) -> None:
        self._held = ""

    def feed(self, delta: str) -> str:
        text = self._held + delta
        self._held = text[-1] if text and "\ud800" <= text[-1] <= "\udbff" else ""
        return _well_formed(text[: len(text) - len(self._held)])

    def flush(self) -> str:
        """What is still held at the end of the reply: a half that never found its pair."""
        held, self._held = self._held, ""
        return REPLACEMENT if held else ""


def _well_formed(text: str) -> str:
    if text.isascii():
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def build_assistant(settings: Settings) -> AssistantProvider:
    """The configured provider; the process may then open a file per socket its
    replies need (one to the client, one to an OpenAI-compatible provider)."""
    if settings.assistant_provider == "openai":
        allow_open_files(2 * settings.assistant_max_concurrent_replies + SPARE_FILES)
        return OpenAICompatibleAssistant(settings)
    allow_open_files(settings.assistant_max_concurrent_replies + SPARE_FILES)
    return EchoAssistant()


def allow_open_files(needed: int) -> None:
    """Raises the soft RLIMIT_NOFILE toward `needed`, as far as the hard limit allows;
    a warning when that is not far enough. A socket over the limit fails to open."""
    if resource is None:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the open-files limit to %d: %s", target, exc)
            target = soft
        else:
            logger.info("open-files limit raised from %d to %d", soft, target)
    if target < needed:
        logger.warning(
            "ASSISTANT_MAX_CONCURRENT_REPLIES needs about %d open files, but this process "
            "may open %d: replies past that fail. Raise the hard limit (ulimit -Hn, "
            "systemd LimitNOFILE=, docker --ulimit nofile=) or lower the setting",
            needed,
            target,
        )
