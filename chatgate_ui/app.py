"""A chat in the browser on top of chatgate: `streamlit run chatgate_ui/app.py`.

It talks to chatgate over HTTP only (CHATGATE_URL, default
http://127.0.0.1:8009), with `requests` and the headers dict every Streamlit
app sends. The tokens live in `st.session_state`; an expired access token is
renewed silently, and a dead login brings the login form back.
"""

import logging
import os
from collections.abc import Callable
from typing import Any

import streamlit as st

from chatgate_ui.client import (
    ChatgateClient,
    ChatgateError,
    LoginRequired,
    ReplyFailed,
    Tokens,
)

DEFAULT_URL = "http://127.0.0.1:8009"
NEW_TITLE = "New chat"
TITLE_CHARS = 60

logger = logging.getLogger("chatgate_ui")
state = st.session_state


def keep_tokens(tokens: Tokens | None) -> None:
    state["tokens"] = tokens
    if tokens is None:
        state.pop("user", None)
        state.pop("current", None)


def client() -> ChatgateClient:
    url = os.environ.get("CHATGATE_URL", DEFAULT_URL)
    return ChatgateClient(url, tokens=state.get("tokens"), on_tokens=keep_tokens)


def notice(kind: str, text: str) -> None:
    """A message shown once, on the next run (st.rerun would lose one shown now)."""
    state["notice"] = (kind, text)


def show_notice() -> None:
    if "notice" in state:
        kind, text = state.pop("notice")
        (st.success if kind == "success" else st.warning if kind == "warning" else st.error)(text)


# --- logged out ----------------------------------------------------------------


def login_page(api: ChatgateClient) -> None:
    st.title("chatgate")
    show_notice()
    log_in, sign_up = st.tabs(["Log in", "Register"])
    with log_in, st.form("login"):
        email = st.text_input("Email", key="login_email")
        password = st.text_input("Password", type="password", key="login_password")
        if st.form_submit_button("Log in", type="primary", key="login_submit"):
            try:
                api.login(email, password)
            except ChatgateError as exc:
                st.error(str(exc))
            else:
                st.rerun()
    with sign_up, st.form("register"):
        email = st.text_input("Email", key="register_email")
        name = st.text_input("Display name (optional)", key="register_name")
        password = st.text_input(
            "Password (8 characters or more)", type="password", key="register_password"
        )
        if st.form_submit_button("Create account", key="register_submit"):
            try:
                api.register(email, password, name or None)
                api.login(email, password)
            except ChatgateError as exc:
                st.error(str(exc))
            else:
                st.rerun()


# --- logged in ------------------------------------------------------------------


def act(work: Callable[[], str | None]) -> None:
    """Runs a sidebar action, then reloads the page with its outcome as a notice:
    what it says it did, or chatgate's refusal (the chat stays on the page)."""
    try:
        done = work()
    except LoginRequired:
        raise
    except ChatgateError as exc:
        notice("error", str(exc))
    else:
        if done:
            notice("success", done)
    st.rerun()


def sidebar(api: ChatgateClient, sessions: list[dict[str, Any]]) -> None:
    with st.sidebar:
        user = state.get("user") or {}
        st.caption(f"Logged in as **{user.get('display_name') or user.get('email') or ''}**")
        if st.button("+ New chat", key="new_chat", width="stretch"):
            act(lambda: new_chat(api))
        st.subheader("Chats")
        if not sessions:
            st.caption("No chats yet: write a message to start one.")
        for session in sessions:
            current = session["id"] == state.get("current")
            if st.button(
                session["title"],
                key=f"open_{session['id']}",
                width="stretch",
                type="primary" if current else "secondary",
            ):
                state["current"] = session["id"]
                st.rerun()
        chosen = next((s for s in sessions if s["id"] == state.get("current")), None)
        if chosen is not None:
            st.divider()
            # The title is in the key: a box for an old title would put it back on Rename.
            title = st.text_input(
                "Title", value=chosen["title"], key=f"title_{chosen['id']}_{chosen['title']}"
            )
            rename, delete = st.columns(2)
            if rename.button("Rename", key="rename", width="stretch"):
                act(lambda: rename_chat(api, chosen, title))
            if delete.button("Delete", key="delete", width="stretch"):
                act(lambda: delete_chat(api, chosen))
        st.divider()
        if st.button("Log out", key="logout", width="stretch"):
            if api.logout():
                notice("success", "Logged out.")
            else:
                notice("warning", "Logged out here, but chatgate could not be told.")
            st.rerun()


def new_chat(api: ChatgateClient) -> None:
    state["current"] = api.new_session()["id"]


def rename_chat(api: ChatgateClient, chat: dict[str, Any], title: str) -> str:
    if not title.strip():
        raise ChatgateError("A title cannot be empty.")
    api.rename(chat["id"], title.strip())
    return "Renamed."


def delete_chat(api: ChatgateClient, chat: dict[str, Any]) -> str:
    api.delete(chat["id"])
    state.pop("current", None)
    return f"Deleted “{chat['title']}”."


def chat_page(api: ChatgateClient) -> None:
    if "user" not in state:
        state["user"] = api.me()
    sessions = api.sessions()
    if state.get("current") not in {s["id"] for s in sessions}:
        state["current"] = sessions[0]["id"] if sessions else None
    sidebar(api, sessions)
    current = next((s for s in sessions if s["id"] == state["current"]), None)
    st.title(current["title"] if current else "chatgate")
    show_notice()
    if current is not None:
        for message in api.history(current["id"]):
            with st.chat_message(message["role"]):
                st.markdown(message["content"])
    prompt = st.chat_input("Message chatgate")
    if prompt and prompt.strip():
        send(api, current, prompt)


def send(api: ChatgateClient, current: dict[str, Any] | None, prompt: str) -> None:
    """Shows the message, streams the reply into the page as it arrives, then reloads."""
    try:
        if current is None:
            current = api.new_session(_title_from(prompt))
            state["current"] = current["id"]
        elif current["title"] == NEW_TITLE and not int(current.get("message_count", 0)):
            current = api.rename(current["id"], _title_from(prompt))
        with st.chat_message("user"):
            st.markdown(prompt)
        with st.chat_message("assistant"):
            st.write_stream(api.send(current["id"], prompt))
    except LoginRequired:
        raise
    except ReplyFailed as exc:
        notice("error", _sentences(str(exc), "Your message was kept."))
    except ChatgateError as exc:
        notice("error", _sentences(str(exc), "Your message was not sent."))
    st.rerun()


def _sentences(first: str, second: str) -> str:
    return f"{first} {second}" if first.endswith((".", "!", "?", ")")) else f"{first}. {second}"


def _title_from(text: str) -> str:
    line = text.strip().splitlines()[0].strip()
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rstrip() + "…"


# --- the page -----------------------------------------------------------------


def main() -> None:
    st.set_page_config(page_title="chatgate", page_icon="💬", layout="wide")
    api = client()
    try:
        if api.tokens is None:
            login_page(api)
        else:
            chat_page(api)
    except LoginRequired as exc:
        keep_tokens(None)
        notice("warning", str(exc))
        st.rerun()
    except ChatgateError as exc:
        st.error(str(exc))
    except Exception:  # a bug here: a sentence on the page, the details in the log
        logger.exception("the chatgate app failed")
        st.error("Something went wrong in this app; reload the page to try again.")


main()
