"""Property-based tests (hypothesis) for the pieces with rules: cursors, emails, tokens.

Text fidelity through HTTP, and arbitrary bearer strings, are in test_fuzz.py,
against the real server there.
"""

import base64
import contextlib
import json
import secrets
import string

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from app.auth import TokenService
from app.errors import InvalidCursor, Unauthorized
from app.pagination import decode_history_cursor, decode_keyset_cursor, encode_cursor
from app.schemas import LoginRequest, RegisterRequest, normalize_email

PROPERTIES = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Text SQLite can store: any code point but lone surrogates.
TEXT = st.text(st.characters(exclude_categories=("Cs",)))
SECRET = secrets.token_urlsafe(48)


class TestCursors:
    @PROPERTIES
    @given(updated_at=TEXT, session_id=TEXT)
    def test_a_session_cursor_gives_back_what_it_was_made_of(
        self, updated_at: str, session_id: str
    ) -> None:
        assert decode_keyset_cursor(encode_cursor(updated_at, session_id)) == (
            updated_at,
            session_id,
        )

    @PROPERTIES
    @given(seq=st.integers(min_value=0, max_value=2**62 - 1))
    def test_a_history_cursor_gives_back_its_position(self, seq: int) -> None:
        assert decode_history_cursor(encode_cursor(seq)) == seq

    @PROPERTIES
    @given(cursor=st.text() | st.binary().map(lambda b: base64.urlsafe_b64encode(b).decode()))
    def test_any_other_string_is_an_invalid_cursor_and_nothing_else(self, cursor: str) -> None:
        for decode in (decode_keyset_cursor, decode_history_cursor):
            with contextlib.suppress(InvalidCursor):  # any other exception fails the test
                decode(cursor)

    @PROPERTIES
    @given(key=st.recursive(st.none() | st.booleans() | st.floats() | TEXT, st.lists))
    def test_json_of_the_wrong_shape_is_an_invalid_cursor(self, key: object) -> None:
        raw = base64.urlsafe_b64encode(json.dumps(key).encode()).decode()
        with pytest.raises(InvalidCursor):
            decode_history_cursor(raw)


LOCAL = st.text(string.ascii_letters + string.digits + "._%+-", min_size=1, max_size=20)
# At most 20 + 1 + 5 * 11 + 4 characters: well inside an address's 254.
DOMAIN = st.lists(
    st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=10),
    min_size=1,
    max_size=5,
).map(lambda labels: ".".join(labels) + ".com")
SPACES = st.text(" \t", max_size=3)


class TestEmails:
    @PROPERTIES
    @given(value=st.text())
    def test_normalising_twice_changes_nothing(self, value: str) -> None:
        once = normalize_email(value)
        assert normalize_email(once) == once

    @PROPERTIES
    @given(local=LOCAL, domain=DOMAIN, before=SPACES, after=SPACES, upper=st.booleans())
    def test_every_spelling_of_an_address_is_the_same_account(
        self, local: str, domain: str, before: str, after: str, upper: bool
    ) -> None:
        address = f"{local}@{domain}"
        spelled = f"{before}{address.upper() if upper else address}{after}"
        registered = RegisterRequest(email=address, password="password 1")
        assert RegisterRequest(email=spelled, password="password 1").email == registered.email
        assert LoginRequest(email=spelled, password="x").email == registered.email

    @PROPERTIES
    @given(value=TEXT)
    def test_any_text_is_a_canonical_address_or_a_422(self, value: str) -> None:
        try:
            email = RegisterRequest(email=value, password="password 1").email
        except ValidationError:
            return
        assert email == email.strip().lower() or not email.isascii()
        assert RegisterRequest(email=email, password="password 1").email == email


class TestTokens:
    tokens = TokenService(SECRET, "chatgate", 3600, 86400)

    @PROPERTIES
    @given(token=st.text(max_size=5000))
    def test_any_string_is_refused_as_unauthorized_and_nothing_else(self, token: str) -> None:
        with pytest.raises(Unauthorized):
            self.tokens.verify_access(token)

    @PROPERTIES
    @given(position=st.integers(min_value=0), replacement=st.characters(codec="ascii"))
    def test_a_token_changed_anywhere_is_refused(self, position: int, replacement: str) -> None:
        token = self.tokens.issue_pair("user-1", "family-1", "user").access_token
        position %= len(token)
        assume(token[position] != replacement)
        tampered = token[:position] + replacement + token[position + 1 :]
        try:
            claims = self.tokens.verify_access(tampered)
        except Unauthorized:
            return
        # base64url's last character carries spare bits: a change there can decode to
        # the same bytes, the same signed token, which is not a forgery.
        assert claims.user_id == "user-1"
        assert base64.urlsafe_b64decode(_padded(tampered.split(".")[2])) == (
            base64.urlsafe_b64decode(_padded(token.split(".")[2]))
        )

    @PROPERTIES
    @given(token=st.sampled_from(["access", "refresh"]))
    def test_only_an_access_token_is_an_access_token(self, token: str) -> None:
        pair = self.tokens.issue_pair("user-1", "family-1", "user")
        if token == "access":
            assert self.tokens.verify_access(pair.access_token).user_id == "user-1"
        else:
            with pytest.raises(Unauthorized):
                self.tokens.verify_access(pair.refresh_token)


def _padded(part: str) -> str:
    return part + "=" * (-len(part) % 4)
