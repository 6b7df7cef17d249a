"""A chat exchange: store the user's message, ask the assistant, store its reply.

No transaction is held while the assistant works: the user's message is
committed first (it is never lost, even if the assistant fails), the reply in
a second transaction.
"""

import logging
from collections.abc import AsyncGenerator

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
    """The reply to one stored user message, as it arrives; `message` once it is stored."""

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

    async def deltas(self) -> AsyncGenerator[str]:
        """Yields the reply's pieces; stores the reply when the stream ends.

        If the client goes away (cancellation, or the generator being closed),
        generation stops and what was generated so far is stored. A provider
        failure raises ProviderError and stores nothing.
        """
        pieces: list[str] = []
        try:
            context = await context_for(self._db, self._assistant, self.user_message)
            async for delta in self._assistant.stream_reply(context):
                pieces.append(delta)
                yield delta
        except ProviderError:
            raise
        except BaseException:
            if pieces:
                await self._store(pieces)
            raise
        await self._store(pieces)

    async def _store(self, pieces: list[str]) -> None:
        # Shielded: after a disconnect this runs inside a cancelled scope.
        with anyio.CancelScope(shield=True):
            self.message = await store_reply(
                self._db,
                user_id=self._user_id,
                session_id=self.user_message.session_id,
                text="".join(pieces),
            )
