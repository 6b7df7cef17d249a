"""Database.write: batched write jobs (group commit) on the writer's own thread."""

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import app.db
from app.db import Database


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(tmp_path / "jobs.db")
    await database.open()
    try:
        yield database
    finally:
        await database.close()


def add_user(email: str, *, then_fail: bool = False) -> Any:
    def job(conn: sqlite3.Connection) -> str:
        conn.execute(
            "INSERT INTO users (id, email, password_hash, created_at)"
            " VALUES (?, ?, '!', '2026-01-01T00:00:00.000000Z')",
            (email, email),
        )
        if then_fail:
            raise ValueError("changed my mind")
        return email

    return job


async def emails(db: Database) -> set[str]:
    rows = await db.reader().execute_fetchall("SELECT email FROM users")
    return {row[0] for row in rows}


async def test_a_write_is_on_disk_and_visible_to_readers_when_it_returns(db: Database) -> None:
    assert await db.write(add_user("a@example.com")) == "a@example.com"
    assert await emails(db) == {"a@example.com"}
    # A separate connection, as after a crash: the row is in the file itself.
    with sqlite3.connect(db.path) as other:
        assert other.execute("SELECT count(*) FROM users").fetchone() == (1,)
    other.close()


async def test_a_job_that_raises_changes_nothing_and_spares_its_batch(db: Database) -> None:
    results = await asyncio.gather(
        db.write(add_user("a@example.com")),
        db.write(add_user("b@example.com", then_fail=True)),
        db.write(add_user("c@example.com")),
        return_exceptions=True,
    )
    assert results[0] == "a@example.com"
    assert isinstance(results[1], ValueError)
    assert results[2] == "c@example.com"
    assert await emails(db) == {"a@example.com", "c@example.com"}


async def test_a_constraint_error_reaches_only_its_own_caller(db: Database) -> None:
    await db.write(add_user("a@example.com"))
    duplicate, fresh = await asyncio.gather(
        db.write(add_user("a@example.com")), db.write(add_user("d@example.com")),
        return_exceptions=True,
    )  # fmt: skip
    assert isinstance(duplicate, sqlite3.IntegrityError)
    assert fresh == "d@example.com"


async def test_jobs_that_arrive_together_share_a_commit(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []
    real_run_batch = app.db._run_batch

    def counting(jobs: list[Any], conn: sqlite3.Connection) -> list[tuple[bool, Any]]:
        sizes.append(len(jobs))
        return real_run_batch(jobs, conn)

    monkeypatch.setattr(app.db, "_run_batch", counting)
    written = await asyncio.gather(*(db.write(add_user(f"u{i}@example.com")) for i in range(50)))
    assert len(written) == 50
    assert len(await emails(db)) == 50
    assert sum(sizes) == 50
    assert len(sizes) < 50  # batched: fewer transactions than writes


async def test_a_caller_that_gives_up_still_gets_its_write(db: Database) -> None:
    task = asyncio.create_task(db.write(add_user("late@example.com")))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if await emails(db):
            break
        await asyncio.sleep(0.01)
    assert await emails(db) == {"late@example.com"}


async def test_writes_are_durable_through_a_power_cut(db: Database) -> None:
    def synchronous(conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA synchronous").fetchone()[0])

    assert await db.write(synchronous) == 2  # FULL: COMMIT waits for the disk


async def test_transactions_and_jobs_never_interleave(db: Database) -> None:
    async def slow_transaction() -> None:
        async with db.transaction() as conn:
            await conn.execute(
                "INSERT INTO users (id, email, password_hash, created_at)"
                " VALUES ('t', 't@example.com', '!', 'x')"
            )
            await asyncio.sleep(0.05)  # a job submitted now must wait for this block
            raise RuntimeError("roll it back")

    transaction = asyncio.create_task(slow_transaction())
    await asyncio.sleep(0.01)
    assert await db.write(add_user("j@example.com")) == "j@example.com"
    with pytest.raises(RuntimeError):
        await transaction
    assert await emails(db) == {"j@example.com"}


async def test_writing_to_a_closed_database_is_an_error(tmp_path: Path) -> None:
    closed = Database(tmp_path / "closed.db")
    with pytest.raises(RuntimeError, match="not open"):
        await closed.write(add_user("x@example.com"))


def count_users(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM users").fetchone()[0])


def failing_read(conn: sqlite3.Connection) -> int:
    raise ValueError("not this one")


class TestReadJobs:
    """Database.read: the token check's query, many requests to one trip to a reader."""

    async def test_concurrent_reads_each_get_their_own_answer(self, db: Database) -> None:
        await db.write(add_user("a@example.com"))
        results = await asyncio.gather(*(db.read(count_users) for _ in range(50)))
        assert results == [1] * 50

    async def test_a_read_sees_what_was_committed_before_it(self, db: Database) -> None:
        for n in range(1, 4):
            await db.write(add_user(f"u{n}@example.com"))
            assert await db.read(count_users) == n

    async def test_a_failing_read_leaves_the_others_in_its_batch_alone(self, db: Database) -> None:
        jobs = [db.read(count_users), db.read(failing_read), db.read(count_users)]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        assert results[0] == 0
        assert isinstance(results[1], ValueError)
        assert results[2] == 0

    async def test_a_reader_cannot_write(self, db: Database) -> None:
        def sneaky(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM users")

        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            await db.read(sneaky)

    async def test_reads_after_close_are_refused(self, tmp_path: Path) -> None:
        database = Database(tmp_path / "closed.db")
        await database.open()
        await database.close()
        with pytest.raises(RuntimeError, match="not open"):
            await database.read(count_users)
