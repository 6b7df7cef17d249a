"""A chat exchange: store the user's message, ask the assistant, store its reply.

No transaction is held while the assistant works: the user's message is
committed first (it is never lost, even if the assistant fails), the reply in
a second transaction.
"""

import contextlib
import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing

import anyio

from app import repository
from app.db import Database
from app.errors import AssistantUnavailable, SessionNotFound
from app.repository import MessageRecord
from app.services.assistant import AssistantProvider, ProviderError, Turn, complete

logger = logging.getLogger("chatgate.conversation")


async def add_user_message(
    db: Database, *, session_id: str, user_id: str, text: str
) -> MessageRecord:
    async with db.transaction() as conn:
        message = await repository.add_message(
            conn, session_id=session_id, user_id=user_id, role="user", content=text
        )
    if message is None:
        raise SessionNotFound
    return message


async def context_for(
    db: Database, assistant: AssistantProvider, latest: MessageRecord
) -> list[Turn]:
    """The latest messages within the provider's budget, oldest first."""
    records = [latest]
    if assistant.context_messages > 1:
        async with db.read() as conn:
            records = await repository.recent_messages(
                conn, latest.session_id, limit=assistant.context_messages
            )
    kept: list[MessageRecord] = []
    used = 0
    for record in reversed(records):
        used += len(record.content)
        if kept and used > assistant.context_chars:
            break
        kept.append(record)
    return [
        Turn(role="user" if r.role == "user" else "assistant", content=r.content)
        for r in reversed(kept)
    ]


async def store_reply(db: Database, *, user_id: str, session_id: str, text: str) -> MessageRecord:
    async with db.transaction() as conn:
        message = await repository.add_message(
            conn, session_id=session_id, user_id=user_id, role="assistant", content=text
        )
    if message is None:  # the session was deleted while the assistant was answering
        raise SessionNotFound
    return message


async def reply_to(
    db: Database, assistant: AssistantProvider, *, user_id: str, user_message: MessageRecord
) -> MessageRecord:
    try:
        reply = await complete(assistant, await context_for(db, assistant, user_message))
    except ProviderError as exc:
        logger.warning("assistant failed for session %s: %s", user_message.session_id, exc)
        raise AssistantUnavailable from None
    return await store_reply(db, user_id=user_id, session_id=user_message.session_id, text=reply)


async def exchange(
    db: Database, assistant: AssistantProvider, *, session_id: str, user_id: str, text: str
) -> tuple[MessageRecord, MessageRecord]:
    user_message = await add_user_message(db, session_id=session_id, user_id=user_id, text=text)
    assistant_message = await reply_to(db, assistant, user_id=user_id, user_message=user_message)
    return user_message, assistant_message


class StreamedReply:
    """The reply to one stored user message, as it arrives.

    `deltas()` streams it and stores it when the provider finishes. Whatever
    ends the response (a disconnect, a cancelled task, a generator nobody
    closes), `finish()` runs afterwards: it stops the generation and stores the
    part already generated, so history shows what the user saw.
    """

    def __init__(
        self,
        db: Database,
        assistant: AssistantProvider,
        *,
        user_id: str,
        user_message: MessageRecord,
    ) -> None:
        self._db = db
        self._assistant = assistant
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
        context = await context_for(self._db, self._assistant, self.user_message)
        async with aclosing(self._assistant.stream_reply(context)) as stream:
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
            self.message = await store_reply(
                self._db,
                user_id=self._user_id,
                session_id=self.user_message.session_id,
                text="".join(self._pieces),
            )
