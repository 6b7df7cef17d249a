"""Assistant providers: given a conversation, they yield the reply as text deltas."""

import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from app.config import Settings


@dataclass(frozen=True, slots=True)
class Turn:
    role: Literal["user", "assistant"]
    content: str


class AssistantProvider(Protocol):
    # How many of the latest messages the provider wants as context (1: the new one only).
    context_messages: int

    def stream_reply(self, conversation: Sequence[Turn]) -> AsyncIterator[str]:
        """Yields the reply to the last turn, piece by piece."""
        ...

    async def aclose(self) -> None: ...


class ProviderError(Exception):
    """The provider could not produce a reply."""


class EchoAssistant:
    """Offline and deterministic: repeats the user's message, a few words per delta."""

    context_messages = 1

    async def stream_reply(self, conversation: Sequence[Turn]) -> AsyncIterator[str]:
        text = conversation[-1].content if conversation else ""
        for piece in re.findall(r"\s*\S+\s*|\s+", f"Echo: {text}"):
            yield piece

    async def aclose(self) -> None:
        return None


async def complete(provider: AssistantProvider, conversation: Sequence[Turn]) -> str:
    """The whole reply, for routes that do not stream."""
    return "".join([delta async for delta in provider.stream_reply(conversation)])


def build_assistant(settings: Settings) -> AssistantProvider:
    if settings.assistant_provider == "echo":
        return EchoAssistant()
    raise ValueError(f"unknown ASSISTANT_PROVIDER {settings.assistant_provider!r}")
