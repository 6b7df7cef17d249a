"""A chat exchange: store the user's message, ask the assistant, store its reply.

No transaction is held while the assistant works: the user's message is
committed first (it is never lost, even if the assistant fails), the reply in
a second transaction.
"""

from app import repository
from app.db import Database
from app.errors import SessionNotFound
from app.repository import MessageRecord
from app.services.assistant import AssistantProvider, Turn, complete


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


async def conversation_for(
    db: Database, assistant: AssistantProvider, latest: MessageRecord
) -> list[Turn]:
    if assistant.context_messages <= 1:
        records = [latest]
    else:
        async with db.read() as conn:
            records = await repository.recent_messages(
                conn, latest.session_id, limit=assistant.context_messages
            )
    return [
        Turn(role="user" if r.role == "user" else "assistant", content=r.content) for r in records
    ]


async def reply_to(
    db: Database, assistant: AssistantProvider, *, user_id: str, user_message: MessageRecord
) -> MessageRecord:
    reply = await complete(assistant, await conversation_for(db, assistant, user_message))
    async with db.transaction() as conn:
        message = await repository.add_message(
            conn,
            session_id=user_message.session_id,
            user_id=user_id,
            role="assistant",
            content=reply,
        )
    if message is None:  # the session was deleted while the assistant was answering
        raise SessionNotFound
    return message


async def exchange(
    db: Database, assistant: AssistantProvider, *, session_id: str, user_id: str, text: str
) -> tuple[MessageRecord, MessageRecord]:
    user_message = await add_user_message(db, session_id=session_id, user_id=user_id, text=text)
    assistant_message = await reply_to(db, assistant, user_id=user_id, user_message=user_message)
    return user_message, assistant_message
