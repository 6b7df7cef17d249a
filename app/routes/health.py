"""Liveness and readiness probes."""

import logging

from fastapi import APIRouter

from app.deps import DbDep
from app.errors import ServiceUnavailable
from app.routes.limited_route import LimitedRoute
from app.schemas import StatusResponse, error_responses

router = APIRouter(tags=["service"], route_class=LimitedRoute, responses=error_responses(429))
logger = logging.getLogger("chatgate.health")


@router.head("/healthz", include_in_schema=False)  # uptime checkers often use HEAD
@router.get("/healthz")
async def healthz() -> StatusResponse:
    """The process is up (no auth, touches nothing)."""
    return StatusResponse(status="ok")


@router.head("/readyz", include_in_schema=False)
@router.get("/readyz", responses=error_responses(503))
async def readyz(db: DbDep) -> StatusResponse:
    """The database answers a query."""
    try:
        await db.schema_version()  # reads the file itself, unlike SELECT 1
    except Exception as exc:
        logger.warning("readiness check failed: %s", type(exc).__name__)
        raise ServiceUnavailable("The database is not reachable.") from None
    return StatusResponse(status="ready")
