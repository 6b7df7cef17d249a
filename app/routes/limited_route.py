"""The route class every chatgate route uses: its declared rate limits come first."""

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from app.ratelimit import ANY_ROUTE, RateLimiter, RouteLimits, limits_of


def _limiter(scope: Scope) -> RateLimiter | None:
    """The app's limiter, or None while rate limits are off (read from the settings, so an
    app serving without its lifespan, as some tests run it, needs no limiter then)."""
    state = scope["app"].state
    if not state.settings.rate_limit_enabled:
        return None
    limiter: RateLimiter = state.services.limiter
    return limiter


class LimitedRoute(APIRoute):
    """A route whose requests are counted against the limits its endpoint declares
    (`@rate_limited`, app/ratelimit.py), or the anonymous one when it declares none,
    before the body is read or any dependency runs: a refused request costs nothing
    else. A method the route does not have counts as an anonymous request."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self.limits: RouteLimits = limits_of(endpoint)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        limiter = _limiter(scope)
        if limiter is not None:
            limits = self.limits if scope["method"] in (self.methods or ()) else ANY_ROUTE
            await limiter.check_route(scope, limits)
        await super().handle(scope, receive, send)


def limit_unknown_paths(router: APIRouter) -> None:
    """A path no route has counts as an anonymous request too (before its 404)."""
    not_found: ASGIApp = router.default

    async def default(scope: Scope, receive: Receive, send: Send) -> None:
        limiter = _limiter(scope)
        if limiter is not None and scope["type"] == "http":
            await limiter.check_route(scope, ANY_ROUTE)
        await not_found(scope, receive, send)

    router.default = default
