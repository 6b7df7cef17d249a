"""Every SQL statement chatgate runs, one module per table group.

Callers pass the connection and own the transaction.
"""

from app.repository.chats import (
    MessageRecord,
    SessionRecord,
    add_message,
    delete_session,
    get_owned_session,
    insert_session,
    list_messages,
    list_sessions,
    recent_messages,
    rename_session,
)
from app.repository.common import new_id, utc_now
from app.repository.users import (
    DuplicateEmail,
    UserRecord,
    email_taken,
    get_user_by_email,
    get_user_by_id,
    insert_user,
    update_password_hash,
    user_exists,
)

__all__ = [
    "DuplicateEmail",
    "MessageRecord",
    "SessionRecord",
    "UserRecord",
    "add_message",
    "delete_session",
    "email_taken",
    "get_owned_session",
    "get_user_by_email",
    "get_user_by_id",
    "insert_session",
    "insert_user",
    "list_messages",
    "list_sessions",
    "new_id",
    "recent_messages",
    "rename_session",
    "update_password_hash",
    "user_exists",
    "utc_now",
]
