"""The app `make bench` serves: chatgate as shipped, plus one route only the benchmark has.

`POST /_bench/insert` writes one row through the same Database layer the chat
routes use, with no token and no validation: the write ceiling. The read
ceiling is chatgate's own `/healthz`, which touches neither token nor database.
"""

import sqlite3
from typing import Any

from fastapi import FastAPI

from app.deps import DbDep
from app.main import create_app


def insert_row(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO bench_rows (body) VALUES (?)", ("x" * 40,))


def create() -> FastAPI:
    app = create_app()

    @app.post("/_bench/insert", include_in_schema=False)
    async def raw_insert(db: DbDep) -> dict[str, Any]:
        await db.write(insert_row)
        return {"success": True}

    return app
