"""Assistant providers: given a conversation, they yield the reply as text deltas."""

import json
import logging
import re
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import httpx
from httpx_sse import SSEError, aconnect_sse

from app.config import Settings

logger = logging.getLogger("chatgate.assistant")


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
        self._client = client or httpx.AsyncClient(
            base_url=settings.openai_base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(
                settings.openai_read_timeout, connect=settings.openai_connect_timeout
            ),
        )

    async def stream_reply(self, conversation: Sequence[Turn]) -> AsyncGenerator[str]:
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


async def complete(provider: AssistantProvider, conversation: Sequence[Turn]) -> str:
    """The whole reply, for routes that do not stream."""
    return "".join([delta async for delta in provider.stream_reply(conversation)])


def build_assistant(settings: Settings) -> AssistantProvider:
    if settings.assistant_provider == "openai":
        return OpenAICompatibleAssistant(settings)
    return EchoAssistant()
