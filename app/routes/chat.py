"""Chat sessions and messages; every route acts only on the caller's own sessions."""

import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import replace
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Depends, Query, status
from fastapi.sse import EventSourceResponse, ServerSentEvent

from app import repository
from app.deps import (
    ConversationDep,
    CurrentUserId,
    DbDep,
    OwnedSession,
)
from app.errors import AssistantUnavailable, SessionNotFound, sentence_for
from app.pagination import decode_history_cursor, decode_keyset_cursor, encode_cursor
from app.ratelimit import RouteLimits, rate_limited
from app.repository import MessageRecord
from app.routes.json_route import JsonRoute
from app.schemas import (
    HISTORY_PAGE_DEFAULT,
    HISTORY_PAGE_MAX,
    PAGE_DEFAULT,
    PAGE_MAX,
    TITLE_MAX_CHARS,
    ChatMessage,
    ChatSession,
    HistoryResponse,
    MessageCreate,
    MessageExchangeResponse,
    SessionCreate,
    SessionCreatedResponse,
    SessionListResponse,
    SessionRename,
    SessionResponse,
    SuccessResponse,
    error_responses,
)
from app.services.assistant import ProviderError
from app.services.conversation import ReplySlot, StreamedReply, log_unexpected

logger = logging.getLogger("chatgate.chat")
router = APIRouter(
    prefix="/chat",
    tags=["chat"],
    # No router-level dependency: each route names its user (CurrentUserId, or
    # OwnedSession, which depends on it), and a second node for the same check
    # costs every request (docs/performance.md). tests/test_chat.py checks that
    # every route here depends on get_current_user_id.
    route_class=JsonRoute,
    responses=error_responses(401, 413, 415, 422, 429),
)

DEFAULT_TITLE = "New chat"
# Each write that asks the assistant counts against its user's `chat` limit.
CHAT_WRITE = rate_limited(RouteLimits(per_user="chat"))
SEND_DESCRIPTION = """\
Stores the message, then streams the reply as Server-Sent Events:

- `event: delta` / `data: {"content": "…"}`, once per piece of the reply;
- `event: done` / `data: {"user_message": {…}, "assistant_message": {…}}` at the end;
- or `event: error` / `data: {"error": "…"}` if the assistant fails (the user
  message stays stored) and the stream ends.

Wrong session, bad body or bad token: a plain JSON error before any event; so is
a 503 (with Retry-After, the message not stored) while ASSISTANT_MAX_CONCURRENT_REPLIES
replies are being written.
If the client disconnects, generation stops and the partial reply is stored.
"""
Cursor = Annotated[str | None, Query(max_length=500, description="A next_cursor value.")]


def _title_from(text: str) -> str:
    first_line = text.strip().splitlines()[0].strip() if text.strip() else ""
    limit = min(60, TITLE_MAX_CHARS)
    return first_line if len(first_line) <= limit else first_line[: limit - 1] + "…"


@router.post(
    "/session/new", status_code=status.HTTP_201_CREATED, responses=error_responses(502, 503)
)
@CHAT_WRITE
async def create_session(
    user_id: CurrentUserId, chat: ConversationDep, body: SessionCreate | None = None
) -> SessionCreatedResponse:
    """Start a session; with `initial_message`, it is stored and answered at once."""
    body = body or SessionCreate()
    title = body.title or (_title_from(body.initial_message) if body.initial_message else "")
    if body.initial_message is None:
        session = await chat.start_session(user_id=user_id, title=title or DEFAULT_TITLE)
        return SessionCreatedResponse(session=ChatSession.model_validate(session), messages=[])
    # Taken first: when no reply can be written now, nothing at all is created.
    with chat.reply_slot():
        session = await chat.start_session(user_id=user_id, title=title or DEFAULT_TITLE)
        try:
            pair = await chat.exchange(
                session_id=session.id, user_id=user_id, text=body.initial_message
            )
        except AssistantUnavailable as exc:
            # The session and the message are stored: say where, so the client can retry.
            raise AssistantUnavailable(detail={"session_id": session.id}) from exc
    messages = [ChatMessage.model_validate(m) for m in pair]
    # The reply's position and time are the session's new count and activity.
    session = replace(session, message_count=pair[1].seq, updated_at=pair[1].created_at)
    return SessionCreatedResponse(session=ChatSession.model_validate(session), messages=messages)


@router.post("/message", responses=error_responses(404, 502, 503))
@CHAT_WRITE
async def send_message(
    body: MessageCreate, user_id: CurrentUserId, chat: ConversationDep
) -> MessageExchangeResponse:
    """Add a message to one of your sessions and get the assistant's reply."""
    with chat.reply_slot():
        user_message, assistant_message = await chat.exchange(
            session_id=body.session_id, user_id=user_id, text=body.message
        )
    return MessageExchangeResponse(
        session_id=body.session_id,
        user_message=ChatMessage.model_validate(user_message),
        assistant_message=ChatMessage.model_validate(assistant_message),
    )


async def take_reply_slot(_: CurrentUserId, chat: ConversationDep) -> AsyncIterator[ReplySlot]:
    """A place for the reply, taken before the message is stored: when none is free,
    a JSON 503 and nothing stored. Held until the reply is over, however it ends."""
    with chat.reply_slot() as slot:
        yield slot


HeldReplySlot = Annotated[ReplySlot, Depends(take_reply_slot, scope="request")]


async def accept_message(
    body: MessageCreate, user_id: CurrentUserId, chat: ConversationDep, _: HeldReplySlot
) -> MessageRecord:
    """Stores the user's message before any event is sent, so a wrong session or a bad
    body is a plain JSON error, and the message survives whatever the stream does."""
    return await chat.store_message(
        session_id=body.session_id, user_id=user_id, role="user", text=body.message
    )


AcceptedMessage = Annotated[MessageRecord, Depends(accept_message)]


async def streamed_reply(
    user_message: AcceptedMessage,
    user_id: CurrentUserId,
    chat: ConversationDep,
    slot: HeldReplySlot,
) -> AsyncIterator[StreamedReply]:
    """The reply being streamed; its teardown runs once the response is over, however
    it ended, and stores the partial reply of a client that went away."""
    reply = StreamedReply(chat, user_id=user_id, user_message=user_message, slot=slot)
    try:
        yield reply
    finally:
        await reply.finish()


ReplyStream = Annotated[StreamedReply, Depends(streamed_reply, scope="request")]


@router.post(
    "/send",
    response_class=EventSourceResponse,
    responses=error_responses(404, 503),
    openapi_extra={"description": SEND_DESCRIPTION},
)
@CHAT_WRITE
async def stream_message(reply: ReplyStream) -> AsyncIterator[ServerSentEvent]:
    """Add a message and stream the reply as Server-Sent Events (delta, then done or error)."""
    session_id = reply.user_message.session_id
    try:
        async with aclosing(reply.deltas()) as deltas:
            async for delta in deltas:
                yield ServerSentEvent(event="delta", data={"content": delta})
        done = _done_event(reply)
    except ProviderError as exc:
        logger.warning("assistant failed for session %s: %s", session_id, exc)
        yield ServerSentEvent(event="error", data={"error": AssistantUnavailable.message})
        return
    except SessionNotFound:
        yield ServerSentEvent(event="error", data={"error": SessionNotFound.message})
        return
    except Exception as exc:
        # The response has started: a 500 can no longer be sent, and a stream that
        # just stops looks like a network fault. Say it, and end the stream cleanly.
        log_unexpected("a streamed reply failed", session_id, exc)
        yield ServerSentEvent(event="error", data={"error": sentence_for(500)})
        return
    yield done


def _done_event(reply: StreamedReply) -> ServerSentEvent:
    assert reply.message is not None  # noqa: S101 - stored when the stream completed
    return ServerSentEvent(
        event="done",
        data={
            "user_message": ChatMessage.model_validate(reply.user_message).model_dump(mode="json"),
            "assistant_message": ChatMessage.model_validate(reply.message).model_dump(mode="json"),
        },
    )


@router.get("/sessions")
async def list_sessions(
    user_id: CurrentUserId,
    db: DbDep,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = PAGE_DEFAULT,
    cursor: Cursor = None,
) -> SessionListResponse:
    """Your sessions, most recent activity first, a page at a time."""
    before = decode_keyset_cursor(cursor) if cursor else None
    rows = await repository.list_sessions(db.reader(), user_id, limit=limit + 1, before=before)
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1].updated_at, page[-1].id) if len(rows) > limit else None
    return SessionListResponse(
        sessions=[ChatSession.model_validate(s) for s in page],
        count=len(page),
        next_cursor=next_cursor,
    )


@router.get("/session/{session_id}", responses=error_responses(404))
async def read_session(session: OwnedSession) -> SessionResponse:
    """One of your sessions."""
    return SessionResponse(session=ChatSession.model_validate(session))


@router.get("/session/{session_id}/history", responses=error_responses(404))
async def read_history(
    session: OwnedSession,
    db: DbDep,
    limit: Annotated[int, Query(ge=1, le=HISTORY_PAGE_MAX)] = HISTORY_PAGE_DEFAULT,
    cursor: Cursor = None,
) -> HistoryResponse:
    """The session's messages, oldest first, a page at a time."""
    after = decode_history_cursor(cursor) if cursor else 0
    rows = await repository.list_messages(db.reader(), session.id, limit=limit + 1, after_seq=after)
    page = rows[:limit]
    return HistoryResponse(
        session_id=session.id,
        messages=[ChatMessage.model_validate(m) for m in page],
        next_cursor=encode_cursor(page[-1].seq) if len(rows) > limit else None,
    )


@router.patch("/session/{session_id}", responses=error_responses(404))
async def rename_session(session: OwnedSession, body: SessionRename, db: DbDep) -> SessionResponse:
    """Give one of your sessions a new title."""
    renamed = await db.write(
        partial(
            repository.rename_session,
            session_id=session.id,
            user_id=session.user_id,
            title=body.title,
        )
    )
    if renamed is None:
        raise SessionNotFound
    return SessionResponse(session=ChatSession.model_validate(renamed))


@router.delete("/session/{session_id}", responses=error_responses(404))
async def delete_session(session: OwnedSession, db: DbDep) -> SuccessResponse:
    """Delete one of your sessions and all its messages."""
    deleted = await db.write(
        partial(repository.delete_session, session_id=session.id, user_id=session.user_id)
    )
    if not deleted:
        raise SessionNotFound
    return SuccessResponse()
