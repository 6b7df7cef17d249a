"""A chat exchange: store the user's message, ask the assistant, store its reply.

No transaction is held while the assistant works. A streamed reply stores the
user's message first (the stream's events refer to it) and the reply when it
ends; a plain exchange stores both in one write once the reply is complete, or
the user's message alone if the assistant fails.

At most `max_replies` replies are written at once in this process: each holds a
ReplySlot, and past the limit a new one is refused at once (503), before anything
is stored, rather than left waiting for a connection with nothing said.
"""

import contextlib
import functools
import logging
import traceback
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from types import TracebackType

import anyio

from app import repository
from app.db import Database
from app.errors import AssistantUnavailable, ServiceUnavailable, SessionNotFound, retry_after
from app.repository import MessageRecord, SessionRecord
from app.repository.common import utc_now
from app.services.assistant import AssistantProvider, ProviderError, Turn

logger = logging.getLogger("chatgate.conversation")

TOO_MANY_REPLIES = "Too many replies are being written right now; retry shortly."
# Replies take seconds: by then some place has usually come free.
REPLY_RETRY_SECONDS = 2


def log_unexpected(what: str, session_id: str, exc: BaseException) -> None:
    """Logs a failure nobody foresaw by its type and where it happened, never its
    message: that may quote the user's text, the reply or a provider's secret."""
    where = "".join(traceback.format_tb(exc.__traceback__)).rstrip()
    logger.error("%s in session %s: %s\n%s", what, session_id, type(exc).__name__, where)


class ReplySlots:
    """The replies being written at once in this process, up to `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0
        self._full = False  # a warning once per spell of refusals, not one per refusal

    def take(self) -> "ReplySlot":
        """A place for one more reply; ServiceUnavailable (503) at once when none is free."""
        if self.in_use >= self.limit:
            if not self._full:
                self._full = True
                logger.warning(
                    "%d replies are being written (ASSISTANT_MAX_CONCURRENT_REPLIES): "
                    "refusing new ones with 503 until one ends",
                    self.in_use,
                )
            raise ServiceUnavailable(
                TOO_MANY_REPLIES,
                detail=f"At most {self.limit} replies are written at once.",
                headers=retry_after(REPLY_RETRY_SECONDS),
            )
        self.in_use += 1
        return ReplySlot(self)

    def give_back(self) -> None:
        self.in_use -= 1
        self._full = False


class ReplySlot:
    """One reply's place; released once, however many of its owners release it."""

    def __init__(self, slots: ReplySlots) -> None:
        self._slots: ReplySlots | None = slots

    def release(self) -> None:
        if self._slots is not None:
            self._slots.give_back()
            self._slots = None

    def __enter__(self) -> "ReplySlot":
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class Conversation:
    """Chat exchanges over one database and one assistant, built once by the lifespan.

    The chat routes take this one dependency rather than the database and the
    assistant separately: each dependency node costs every request.
    """

    def __init__(self, db: Database, assistant: AssistantProvider, *, max_replies: int) -> None:
        self.db = db
        self.assistant = assistant
        self.replies = ReplySlots(max_replies)

    def reply_slot(self) -> ReplySlot:
        """A place for one reply (release it, or use it as a context manager); 503 when
        ASSISTANT_MAX_CONCURRENT_REPLIES are being written."""
        return self.replies.take()

    async def reply_to(self, session_id: str, context: Sequence[Turn]) -> AsyncGenerator[str]:
        """The assistant's reply, piece by piece. Whatever the provider raises becomes a
        ProviderError: a bug in one is a failed reply, not a failed request."""
        try:
            async with aclosing(self.assistant.stream_reply(context)) as stream:
                async for delta in stream:
                    yield delta
        except ProviderError:
            raise
        except Exception as exc:
            log_unexpected("the assistant failed unexpectedly", session_id, exc)
            raise ProviderError(f"unexpected {type(exc).__name__}") from None

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
            async with aclosing(self.reply_to(session_id, context)) as deltas:
                reply = "".join([delta async for delta in deltas])
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
        self,
        conversation: Conversation,
        *,
        user_id: str,
        user_message: MessageRecord,
        slot: ReplySlot,
    ) -> None:
        self._conversation = conversation
        self._user_id = user_id
        self.user_message = user_message
        self.message: MessageRecord | None = None
        self._pieces: list[str] = []
        self._failed = False
        self._generator: AsyncGenerator[str] | None = None
        self._slot = slot

    def deltas(self) -> AsyncGenerator[str]:
        """The reply's pieces; raises ProviderError (storing nothing) if the provider fails,
        and whatever else failed (storing nothing more either)."""
        self._generator = self._generate()
        return self._generator

    async def _generate(self) -> AsyncGenerator[str]:
        session_id = self.user_message.session_id
        try:
            context = await self._conversation.context_for(
                session_id=session_id,
                user_id=self._user_id,
                new=Turn("user", self.user_message.content),
                stored_seq=self.user_message.seq,
            )
            async with aclosing(self._conversation.reply_to(session_id, context)) as stream:
                async for delta in stream:
                    self._pieces.append(delta)
                    yield delta
            await self._store()
        except Exception:
            self._failed = True
            raise
        finally:
            # Freed before the stream's last event, so the client's next message finds
            # it free; the provider's connection is closed by now.
            self._slot.release()

    async def finish(self) -> None:
        """Stops generating and stores the partial reply, unless the stream already ended."""
        with anyio.CancelScope(shield=True):
            if self._generator is not None:
                # A generator still suspended mid-reply is closed here; one that is
                # somehow still running is left to its own cancellation.
                with contextlib.suppress(RuntimeError):
                    await self._generator.aclose()
            self._slot.release()
            if self.message is None and self._pieces and not self._failed:
                try:
                    await self._store()
                except SessionNotFound:
                    pass
                except Exception as exc:
                    # The response is over: there is nobody left to tell.
                    log_unexpected(
                        "storing a partial reply failed", self.user_message.session_id, exc
                    )

    async def _store(self) -> None:
        # Shielded: after a disconnect this runs inside a cancelled scope.
        with anyio.CancelScope(shield=True):
            self.message = await self._conversation.store_message(
                session_id=self.user_message.session_id,
                user_id=self._user_id,
                role="assistant",
                text="".join(self._pieces),
            )
