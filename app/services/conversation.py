"""A chat exchange: store the user's message, ask the assistant, store its reply.

No transaction is held while the assistant works. A streamed reply stores the
user's message first (the stream's events refer to it) and the reply when it
ends; a plain exchange stores both in one write once the reply is complete, or
the user's message alone if the assistant fails.
"""

import contextlib
import functools
import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing

import anyio

from app import repository
from app.db import Database
from app.errors import AssistantUnavailable, SessionNotFound
from app.repository import MessageRecord, SessionRecord
from app.repository.common import utc_now
from app.services.assistant import AssistantProvider, ProviderError, Turn, complete

logger = logging.getLogger("chatgate.conversation")


class Conversation:
    """Chat exchanges over one database and one assistant, built once by the lifespan.

    The chat routes take this one dependency rather than the database and the
    assistant separately: each dependency node costs every request.
    """

    def __init__(self, db: Database, assistant: AssistantProvider) -> None:
        self.db = db
        self.assistant = assistant

    async def start_session(self, *, user_id: str, title: str) -> SessionRecord:
        return await self.db.write(
            functools.partial(repository.insert_session, user_id=user_id, title=title)
        )

    async def store_message(
        self, *, session_id: str, user_id: str, role: str, text: str
    ) -> MessageRecord:
        """Appends one message; SessionNotFound when the session is not the user's (or was
        deleted meanwhile, for a reply)."""
        message = await self.db.write(
            functools.partial(
                repository.add_message,
                session_id=session_id,
                user_id=user_id,
                role=role,
                content=text,
            )
        )
        if message is None:
            raise SessionNotFound
        return message

    async def context_for(
        self, *, session_id: str, user_id: str, new: Turn, stored_seq: int | None = None
    ) -> list[Turn]:
        """The latest messages within the provider's budget, oldest first, ending with `new`.

        `stored_seq` is the position of `new` when it is already stored (and the
        session's ownership proven by storing it); otherwise reading the history
        checks ownership: SessionNotFound when the session is not the user's.
        """
        turns: list[Turn] = []
        if self.assistant.context_messages > 1:
            reader = self.db.reader()
            if stored_seq is None and not await repository.get_owned_session(
                reader, session_id, user_id
            ):
                raise SessionNotFound
            records = await repository.recent_messages(
                reader, session_id, limit=self.assistant.context_messages - 1, before_seq=stored_seq
            )
            turns = [Turn("user" if r.role == "user" else "assistant", r.content) for r in records]
        turns.append(new)
        kept: list[Turn] = []
        used = 0
        for turn in reversed(turns):
            used += len(turn.content)
            if kept and used > self.assistant.context_chars:
                break
            kept.append(turn)
        return kept[::-1]

    async def exchange(
        self, *, session_id: str, user_id: str, text: str
    ) -> tuple[MessageRecord, MessageRecord]:
        """Asks the assistant, then stores question and answer in one write.

        If the assistant fails, the question is stored alone and AssistantUnavailable
        raised, so the user can retry from history; either way nothing is acknowledged
        before it is on disk.
        """
        asked_at = utc_now()
        context = await self.context_for(
            session_id=session_id, user_id=user_id, new=Turn("user", text)
        )
        try:
            reply = await complete(self.assistant, context)
        except ProviderError as exc:
            logger.warning("assistant failed for session %s: %s", session_id, exc)
            await self.store_message(session_id=session_id, user_id=user_id, role="user", text=text)
            raise AssistantUnavailable from None
        pair = await self.db.write(
            functools.partial(
                repository.add_exchange,
                session_id=session_id,
                user_id=user_id,
                question=text,
                asked_at=asked_at,
                answer=reply,
            )
        )
        if pair is None:
            raise SessionNotFound
        return pair


class StreamedReply:
    """The reply to one stored user message, as it arrives.

    `deltas()` streams it and stores it when the provider finishes. Whatever
    ends the response (a disconnect, a cancelled task, a generator nobody
    closes), `finish()` runs afterwards: it stops the generation and stores the
    part already generated, so history shows what the user saw.
    """

    def __init__(
        self, conversation: Conversation, *, user_id: str, user_message: MessageRecord
    ) -> None:
        self._conversation = conversation
        self._user_id = user_id
        self.user_message = user_message
        self.message: MessageRecord | None = None
        self._pieces: list[str] = []
        self._failed = False
        self._generator: AsyncGenerator[str] | None = None

    def deltas(self) -> AsyncGenerator[str]:
        """The reply's pieces; raises ProviderError (storing nothing) if the provider fails."""
        self._generator = self._generate()
        return self._generator

    async def _generate(self) -> AsyncGenerator[str]:
        context = await self._conversation.context_for(
            session_id=self.user_message.session_id,
            user_id=self._user_id,
            new=Turn("user", self.user_message.content),
            stored_seq=self.user_message.seq,
        )
        async with aclosing(self._conversation.assistant.stream_reply(context)) as stream:
            try:
                async for delta in stream:
                    self._pieces.append(delta)
                    yield delta
            except ProviderError:
                self._failed = True
                raise
        await self._store()

    async def finish(self) -> None:
        """Stops generating and stores the partial reply, unless the stream already ended."""
        with anyio.CancelScope(shield=True):
            if self._generator is not None:
                # A generator still suspended mid-reply is closed here; one that is
                # somehow still running is left to its own cancellation.
                with contextlib.suppress(RuntimeError):
                    await self._generator.aclose()
            if self.message is None and self._pieces and not self._failed:
                with contextlib.suppress(SessionNotFound):
                    await self._store()

    async def _store(self) -> None:
        # Shielded: after a disconnect this runs inside a cancelled scope.
        with anyio.CancelScope(shield=True):
            self.message = await self._conversation.store_message(
                session_id=self.user_message.session_id,
                user_id=self._user_id,
                role="assistant",
                text="".join(self._pieces),
            )
