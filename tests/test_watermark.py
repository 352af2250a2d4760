"""A database source read by watermark: each run reads only rows changed since the last committed
watermark (minus the lag for late rows), appends none twice, and silver keeps the newest version of each
user."""

from __future__ import annotations

import shutil
import sqlite3

import pytest

from tests.conftest import small_config

pytestmark = pytest.mark.e2e

COLUMNS = "user_id,email,full_name,phone,birth_date,country,signup_ts,updated_at"


def _config(root):
    return small_config(
        root, f"sample.output_dir={root / 'sample'}",
        f"datasets.users.uri=sqlite:///{root / 'app.db'}",
        f'datasets.users.query="SELECT {COLUMNS.replace(",", ", ")} FROM users"',
        "+datasets.users.columns.updated_at={type: timestamp}",
        "datasets.users.watermark_column=updated_at", "datasets.users.watermark_lag_seconds=3600")


def _execute(root, sql: str, *params) -> None:
    with sqlite3.connect(root / "app.db") as db:
        db.execute(sql, params)


def _silver_users(cfg) -> dict:
    from pipelines.io.lake import Lake

    rows = Lake(cfg.catalog).read_arrow("silver.users", columns=["user_id", "country"]).to_pylist()
    return {r["user_id"]: r["country"] for r in rows}


def _bronze_commits(cfg) -> list:
    from pipelines.io.lake import Lake

    return [p for p in Lake(cfg.catalog).snapshot_properties("bronze.users") if p.get("source") == "users"]


def test_rows_past_the_watermark_and_late_rows_within_the_lag_are_read_once(tmp_path, ray_session):
    from pipelines.run import run
    from examples.sample.generate import generate

    cfg = _config(tmp_path)
    generate(cfg.sample)
    shutil.copy(tmp_path / "sample" / "users.db", tmp_path / "app.db")
    _execute(tmp_path, "ALTER TABLE users ADD COLUMN updated_at TEXT")
    _execute(tmp_path, "UPDATE users SET updated_at = '2026-03-01T12:00:00Z'")
    _execute(tmp_path, "UPDATE users SET updated_at = '2026-03-01T10:00:00Z' WHERE user_id = 9")

    first = run(cfg)
    assert first["counts"]["users.bronze_rows_ingested"] == 150
    assert _bronze_commits(cfg)[-1]["watermark"] == "2026-03-01T12:00:00Z"
    before = _silver_users(cfg)

    # a change after the watermark, a late change within the 1 h lag, a late change beyond it
    _execute(tmp_path, "UPDATE users SET country = 'FR', updated_at = '2026-03-01T12:10:00Z' WHERE user_id = 5")
    _execute(tmp_path, "UPDATE users SET country = 'NL', updated_at = '2026-03-01T11:30:00Z' WHERE user_id = 7")
    _execute(tmp_path, "UPDATE users SET country = 'SE', updated_at = '2026-03-01T10:30:00Z' WHERE user_id = 9")
    second = run(cfg)
    # read: rows with updated_at >= 11:00 (watermark - lag): the 148 unchanged 12:00 rows (already in
    # bronze: not appended again), user 5 and user 7. User 9 (10:30) is older than the lag reaches.
    assert second["counts"]["users.bronze_rows_ingested"] == 2
    assert _bronze_commits(cfg)[-1]["watermark"] == "2026-03-01T12:10:00Z"
    after = _silver_users(cfg)
    assert after == {**before, 5: "FR", 7: "NL"}

    third = run(cfg)  # nothing changed: no bronze write, the watermark stays
    assert third["counts"]["users.bronze_rows_ingested"] == 0
    assert third["tables"]["bronze.users"] == second["tables"]["bronze.users"]
    assert len(_bronze_commits(cfg)) == 2 and _silver_users(cfg) == after
