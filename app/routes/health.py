"""Liveness and readiness probes."""

import logging

from fastapi import APIRouter

from app.deps import DbDep
from app.errors import ServiceUnavailable
from app.schemas import StatusResponse, error_responses

router = APIRouter(tags=["service"])
logger = logging.getLogger("chatgate.health")


@router.get("/healthz")
@router.head("/healthz", include_in_schema=False)  # uptime checkers often use HEAD
async def healthz() -> StatusResponse:
    """The process is up (no auth, touches nothing)."""
    return StatusResponse(status="ok")


@router.get("/readyz", responses=error_responses(503))
@router.head("/readyz", include_in_schema=False)
async def readyz(db: DbDep) -> StatusResponse:
    """The database answers a query."""
    try:
        async with db.read() as conn, conn.execute("SELECT 1") as cur:
            await cur.fetchone()
    except Exception as exc:
        logger.warning("readiness check failed: %s", type(exc).__name__)
        raise ServiceUnavailable("The database is not reachable.") from None
    return StatusResponse(status="ready")
