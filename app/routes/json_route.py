"""JSON in: the route class every router with request bodies uses."""

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.dependencies.models import Dependant

from app.deps import authenticate, get_admin, get_current_user_id
from app.errors import UnsupportedMediaType
from app.routes.limited_route import LimitedRoute

BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def media_type(request: Request) -> str:
    """The Content-Type without parameters, lower-cased ("" when absent)."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def is_json(mime: str) -> bool:
    return mime == "application/json" or mime.endswith("+json")


def require_json(request: Request) -> None:
    """415 for a body that is not JSON, instead of a confusing validation error."""
    if request.method not in BODY_METHODS:
        return
    if "content-type" not in request.headers:
        has_body = request.headers.get("content-length", "0") != "0" or (
            "transfer-encoding" in request.headers
        )
        if has_body:
            raise UnsupportedMediaType
        return
    if not is_json(media_type(request)):
        raise UnsupportedMediaType


class JsonRoute(LimitedRoute):
    """A route whose request body, when there is one, must be JSON.

    A route class rather than a dependency: FastAPI solves every dependency
    node on every request at a measurable cost, and this check needs nothing a
    node provides (docs/performance.md). A route that needs a user checks the
    token first, so a caller without a valid one learns nothing else: 401,
    then 415, as when this was the dependency after the token's; an admin
    route, the role too (403).
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        needs_user = _depends_on(self.dependant, get_current_user_id)
        needs_admin = _depends_on(self.dependant, get_admin)

        async def json_only(request: Request) -> Response:
            try:
                require_json(request)
            except UnsupportedMediaType:
                if needs_user:
                    identity = await authenticate(request)
                    if needs_admin:
                        await get_admin(identity)
                raise
            return await handler(request)

        return json_only


def _depends_on(dependant: Dependant, call: Callable[..., Any]) -> bool:
    return any(d.call is call or _depends_on(d, call) for d in dependant.dependencies)
