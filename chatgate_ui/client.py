"""chatgate over HTTP, the way a Streamlit app talks to it: `requests` and a headers dict.

Every call sends `headers = {"Authorization": f"Bearer {token}"}`. An access
token that has expired is renewed once with the refresh token and the call
retried, without the user noticing; when the refresh token is dead too, the
call raises `LoginRequired` and the app shows the login form again. Every
other failure is a `ChatgateError` whose message is chatgate's own sentence.
"""

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import requests

TIMEOUT = (5, 120)  # seconds to connect; between two pieces of a streamed reply
PAGE = 100


class ChatgateError(Exception):
    """A request chatgate refused or could not answer; `str()` is a sentence to show."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class LoginRequired(ChatgateError):
    """The login has ended (logged out elsewhere, expired, account disabled): log in again."""


class ReplyFailed(ChatgateError):
    """The message was stored, but the reply failed or was cut off."""


@dataclass
class Tokens:
    access_token: str
    refresh_token: str


class ChatgateClient:
    def __init__(
        self,
        base_url: str,
        tokens: Tokens | None = None,
        on_tokens: Callable[[Tokens | None], None] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.tokens = tokens
        self._on_tokens = on_tokens or (lambda _: None)

    # --- accounts ------------------------------------------------------------

    def register(self, email: str, password: str, display_name: str | None = None) -> None:
        body: dict[str, Any] = {"email": email, "password": password}
        if display_name:
            body["display_name"] = display_name
        self._call("POST", "/auth/register", json=body, auth=False)

    def login(self, email: str, password: str) -> Tokens:
        response = self._call(
            "POST", "/auth/login", json={"email": email, "password": password}, auth=False
        )
        return self._keep(response.json())

    def logout(self) -> bool:
        """Ends this login at chatgate; the tokens are forgotten here either way. False when
        chatgate could not be told (the refresh token then lives until it expires)."""
        tokens, self.tokens = self.tokens, None
        self._on_tokens(None)
        if tokens is None:
            return True
        try:
            response = requests.post(
                f"{self.base_url}/auth/logout",
                json={"refresh_token": tokens.refresh_token},
                headers={"Authorization": f"Bearer {tokens.access_token}"},
                timeout=TIMEOUT,
            )
        except requests.RequestException:
            return False
        # 401: that login had ended already, which is what logging out is for.
        return response.status_code in (200, 401)

    def me(self) -> dict[str, Any]:
        user: dict[str, Any] = self._call("GET", "/auth/me").json()["user"]
        return user

    # --- chat ----------------------------------------------------------------

    def sessions(self, limit: int = 500) -> list[dict[str, Any]]:
        """The user's sessions, most recent activity first (up to `limit` of them)."""
        found: list[dict[str, Any]] = []
        cursor: str | None = None
        while len(found) < limit:
            params: dict[str, Any] = {"limit": PAGE, **({"cursor": cursor} if cursor else {})}
            page = self._call("GET", "/chat/sessions", params=params).json()
            found += page["sessions"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        return found[:limit]

    def new_session(self, title: str | None = None) -> dict[str, Any]:
        body = {"title": title} if title else {}
        session: dict[str, Any] = self._call("POST", "/chat/session/new", json=body).json()[
            "session"
        ]
        return session

    def rename(self, session_id: str, title: str) -> dict[str, Any]:
        response = self._call("PATCH", f"/chat/session/{session_id}", json={"title": title})
        session: dict[str, Any] = response.json()["session"]
        return session

    def delete(self, session_id: str) -> None:
        self._call("DELETE", f"/chat/session/{session_id}")

    def history(self, session_id: str) -> list[dict[str, Any]]:
        """Every message of the session, oldest first."""
        messages: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 500, **({"cursor": cursor} if cursor else {})}
            page = self._call("GET", f"/chat/session/{session_id}/history", params=params).json()
            messages += page["messages"]
            cursor = page["next_cursor"]
            if cursor is None:
                return messages

    def send(self, session_id: str, message: str) -> Iterator[str]:
        """The reply as it is written: the `content` of each `delta` event of /chat/send.

        A refused request (bad session, rate limit, dead login) raises before
        anything is stored. Once the stream has begun the message is stored: an
        `error` event (the assistant failed), a cut connection or a stream that
        ends without its `done` event raises ReplyFailed.
        """
        response = self._call(
            "POST",
            "/chat/send",
            json={"session_id": session_id, "message": message},
            stream=True,
        )
        with response:
            event, finished = "message", False
            try:
                # Bytes, split on line endings only, then decoded: SSE is UTF-8.
                for raw in response.iter_lines():
                    line = raw.decode("utf-8")
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data = json.loads(line[5:])
                        if event == "delta":
                            yield str(data["content"])
                        elif event == "error":
                            raise ReplyFailed(str(data["error"]))
                        elif event == "done":
                            finished = True
                    elif not line:
                        event = "message"
            except (requests.RequestException, ValueError):
                raise ReplyFailed(
                    "The reply was cut off: the connection to chatgate broke"
                ) from None
            if not finished:
                raise ReplyFailed("The reply was cut off before its end")

    # --- plumbing ------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        auth: bool = True,
        stream: bool = False,
    ) -> requests.Response:
        for attempt in (1, 2):
            headers: dict[str, str] = {}
            if auth:
                if self.tokens is None:
                    raise LoginRequired("Please log in.")
                headers = {"Authorization": f"Bearer {self.tokens.access_token}"}
            response = self._request(method, path, json, params, headers, stream)
            if not response.ok:
                _ = response.content  # read a streamed error answer whole: frees its connection
            if response.status_code == 401 and auth:
                if _detail(response) == "token_expired" and attempt == 1:
                    self._refresh()
                    continue
                self._forget()
                raise LoginRequired("Your login has ended; please log in again.", 401)
            if not response.ok:
                raise ChatgateError(_sentence(response), response.status_code)
            return response
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _request(
        self,
        method: str,
        path: str,
        body: Any,
        params: dict[str, Any] | None,
        headers: dict[str, str],
        stream: bool,
    ) -> requests.Response:
        # A connection per call (requests' own functions): a Streamlit script runs
        # anew on every click, and a kept session would leak its sockets.
        try:
            return requests.request(
                method,
                f"{self.base_url}{path}",
                json=body,
                params=params,
                headers=headers,
                timeout=TIMEOUT,
                stream=stream,
            )
        except requests.RequestException:
            raise ChatgateError(
                f"chatgate does not answer at {self.base_url}; is it running? (CHATGATE_URL)"
            ) from None

    def _refresh(self) -> None:
        """A new pair for the refresh token; the old refresh token is used up."""
        assert self.tokens is not None  # noqa: S101 - only called with tokens
        response = self._request(
            "POST", "/auth/refresh", {"refresh_token": self.tokens.refresh_token}, None, {}, False
        )
        if response.status_code == 401:
            self._forget()
            raise LoginRequired("Your login has expired; please log in again.", 401)
        if response.status_code != 200:
            # Busy or rate-limited (many users of one app share its address): the
            # refresh token is still good, so keep it and let the user retry.
            raise ChatgateError(_sentence(response), response.status_code)
        self._keep(response.json())

    def _keep(self, body: dict[str, Any]) -> Tokens:
        self.tokens = Tokens(body["access_token"], body["refresh_token"])
        self._on_tokens(self.tokens)
        return self.tokens

    def _forget(self) -> None:
        self.tokens = None
        self._on_tokens(None)


def _body(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _detail(response: requests.Response) -> object:
    return _body(response).get("detail")


def _sentence(response: requests.Response) -> str:
    """chatgate's own sentence (`error`: for a 422 it names the field and the problem)."""
    body = _body(response)
    error = body.get("error")
    if not isinstance(error, str) or not error:
        return f"chatgate answered {response.status_code}; try again."
    if response.status_code == 429 and response.headers.get("Retry-After"):
        return f"{error} (retry in {response.headers['Retry-After']} s)"
    return error
