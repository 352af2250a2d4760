"""The commit record: one typed record per commit, read back exactly as written, and readable from the
snapshot properties earlier versions wrote (the tables of an existing lake)."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from pipelines.commit_record import CommitRecord, Refined, Unit

DAY = dt.date(2026, 1, 5)


@pytest.mark.parametrize("record", [
    CommitRecord("r1", "c", "v", source="readings", units=(Unit("/l/a.csv", "ab" * 32, ("a", "b")),)),
    CommitRecord("r1", "c", "v", source="people", units=(Unit("sqlite:///x :: SELECT 1", "cd" * 32),),
                 watermark="2026-01-05T10:00:00Z"),
    CommitRecord("r2", "c", "v", bronze_runs=("r0", "r1"),
                 refined=Refined(10, 8, 1, 1, {"a": 10, "b": 7}, DAY, DAY + dt.timedelta(days=2))),
    CommitRecord("r2", "c", "v", bronze_runs=("r1",), as_of=(DAY, DAY + dt.timedelta(days=30))),
    CommitRecord("r3", "c", "v", backfill=(DAY, DAY + dt.timedelta(days=7)), as_of=(DAY, DAY)),
    CommitRecord("r4", "c", "v"),
])
def test_a_record_reads_back_as_written(record):
    props = record.properties()
    assert all(isinstance(v, str) for v in props.values())
    assert CommitRecord.read(props) == record


def test_properties_written_by_earlier_versions_read_as_records():
    # as 508c6c5 wrote them (ctx.commit_properties(**extra) with JSON-dumped values)
    bronze = {"run_id": "r1", "config_hash": "c", "code_version": "v", "source": "s",
              "ingested_units": json.dumps([{"uri": "/a.csv", "sha256": "ff", "columns": ["x"]}]),
              "added-records": "12", "total-records": "12"}
    silver = {"run_id": "r1", "config_hash": "c", "code_version": "v", "bronze_runs": '["r1"]',
              "refined": json.dumps({"rows_in": 12, "valid": 10, "quarantined": 1, "duplicates": 1,
                                     "present": {"x": 12}, "first_day": "2026-01-05", "last_day": None})}
    gold = {"run_id": "r1", "bronze_runs": '["r1"]', "as_of_first": "2026-01-06", "as_of_last": "2026-02-04",
            "added-records": "40"}
    assert CommitRecord.read(bronze).units == (Unit("/a.csv", "ff", ("x",)),)
    assert CommitRecord.read(bronze).added_records == 12
    assert CommitRecord.read(silver).refined == Refined(12, 10, 1, 1, {"x": 12}, DAY, None)
    assert CommitRecord.read(gold).as_of == (dt.date(2026, 1, 6), dt.date(2026, 2, 4))
    assert CommitRecord.read({"maintenance": "compaction"}) == CommitRecord("")


def test_only_typed_fields_can_be_recorded():
    with pytest.raises(TypeError):
        CommitRecord("r1", as_of_first="2026-01-01")  # type: ignore[call-arg]
