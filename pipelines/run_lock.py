"""One writer at a time per catalog: a run (or `maintain`, `erase`, `backfill`) holds the catalog's lock
from before its first read of table state to its end.

Without it two runs on the same catalog would both see the same bronze runs as pending and both refine
them; the Iceberg commits would still be atomic, but the quality gate's rollback and the idempotency
records assume one writer. The lock is released by the operating system or the database when the holder
dies, even by SIGKILL, so a crashed run never leaves a stale lock behind:

- SQLite catalog: an exclusive `flock` on `<catalog file>.lock`, which also names the holder;
- PostgreSQL catalog: a session-level advisory lock; the holding connection's `application_name` names it;
- other catalogs (REST): no lock here; concurrent writers are left to Iceberg's optimistic commits.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import socket
import time
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

from pipelines.config import CatalogConfig
from pipelines.errors import PipelineError

POLL_SECONDS = 0.5
LOCK_CLASS = 0x6D65_6430  # the advisory lock's first key ("med0"); the second is the catalog name's CRC


class RunLockHeld(PipelineError):
    """Another run holds the catalog: the message names it."""

    exit_code = 4


def _holder(run_id: str, purpose: str) -> dict:
    return {"run_id": run_id, "command": purpose, "pid": os.getpid(), "host": socket.gethostname(),
            "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def _describe(holder: Optional[dict]) -> str:
    if not holder:
        return "another run (starting up)"
    return f"{holder.get('command', 'run')} {holder.get('run_id')} (pid {holder.get('pid')} on {holder.get('host')}, " \
           f"since {holder.get('since')})"


def _wait(try_once: Callable[[], bool], wait_seconds: float) -> bool:
    deadline = time.monotonic() + max(0.0, wait_seconds)
    while True:
        if try_once():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_SECONDS)


@contextmanager
def _file_lock(path: Path, catalog_uri: str, run_id: str, purpose: str, wait_seconds: float) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+", encoding="utf-8")
    try:
        def try_once() -> bool:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False

        if not _wait(try_once, wait_seconds):
            handle.seek(0)
            try:
                holder = json.loads(handle.read() or "null")
            except json.JSONDecodeError:
                holder = None
            raise RunLockHeld(f"catalog {catalog_uri} is locked by {_describe(holder)}; "
                              f"this {purpose} did not start (wait for it, or set lock_wait_seconds)")
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(_holder(run_id, purpose)))
        handle.flush()
        yield
    finally:
        handle.close()  # closing the descriptor releases the flock


@contextmanager
def _postgres_lock(uri: str, catalog_name: str, run_id: str, purpose: str, wait_seconds: float) -> Iterator[None]:
    import sqlalchemy

    key = zlib.crc32(catalog_name.encode()) & 0x7FFF_FFFF
    name = f"medallion {purpose} {run_id}"[:63]
    engine = sqlalchemy.create_engine(uri, poolclass=sqlalchemy.pool.NullPool,
                                      connect_args={"application_name": name})
    connection = engine.connect()
    try:
        def try_once() -> bool:
            got = connection.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:a, :b)"),
                                     {"a": LOCK_CLASS, "b": key}).scalar()
            connection.commit()
            return bool(got)

        if not _wait(try_once, wait_seconds):
            row = connection.execute(sqlalchemy.text(
                "SELECT a.application_name, a.client_addr, a.backend_start FROM pg_locks l "
                "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
                "AND l.classid = :a AND l.objid = :b"), {"a": LOCK_CLASS, "b": key}).first()
            holder = f"{row[0]} (connected from {row[1] or 'local socket'} since {row[2]:%Y-%m-%dT%H:%M:%S})" \
                if row else "another run"
            raise RunLockHeld(f"catalog {catalog_name!r} is locked by {holder}; this {purpose} did not start "
                              "(wait for it, or set lock_wait_seconds)")
        yield
        # explicitly: the server releases a closed session's locks only once its backend has exited
        connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:a, :b)"), {"a": LOCK_CLASS, "b": key})
        connection.commit()
    finally:
        connection.close()  # ends the session, which releases the advisory lock
        engine.dispose()


@contextmanager
def hold(catalog: CatalogConfig, run_id: str, purpose: str = "run", wait_seconds: float = 0.0) -> Iterator[None]:
    """Hold the catalog's lock for the duration of the block; raise RunLockHeld naming the holder when it
    is still taken after `wait_seconds`."""
    uri = catalog.uri
    if uri.startswith("sqlite:///"):
        database = Path(uri[len("sqlite:///"):])
        with _file_lock(database.with_name(database.name + ".lock"), uri, run_id, purpose, wait_seconds):
            yield
    elif uri.startswith("postgresql"):
        with _postgres_lock(uri, catalog.name, run_id, purpose, wait_seconds):
            yield
    else:
        yield
