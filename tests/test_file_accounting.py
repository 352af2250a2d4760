"""Every file under a source's location is accounted for in every run: ingested (compressed CSV and a CSV
with a byte-order mark too), already ingested, rejected with its reason, or empty. A file is judged once per
content; a run that rejected a file ends with status succeeded_with_rejections and exit code 5."""

from __future__ import annotations

import bz2
import gzip
from pathlib import Path

import pytest
from pyiceberg.catalog import load_catalog

from pipelines.config import load_config

pytestmark = pytest.mark.e2e
TINY = ["sample.n_transactions=400", "sample.n_users=30", "sample.days=3", "sample.n_merchants=10",
        "sample.dirt_fraction=0", "features.sets=[]"]
HEADER = b"tx_id,user_id,merchant_id,amount,currency,channel,ts\n"
READS = ".csv, .csv.gz, .csv.bz2, .parquet, .parq"
NONE_YET = {"found": 0, "ingested": 0, "already_ingested": 0, "rejected": 0, "empty": 0, "previously_rejected": 0,
            "previously_empty": 0}


def _row(tx_id: str, hour: int) -> bytes:
    return f"{tx_id},1,1,5.00,EUR,web,2026-01-02T{hour:02d}:00:00Z\n".encode()


def _landing(folder: Path) -> dict:
    """The files dropped beside the sample's days: name -> what must become of it."""
    files = {
        "gz_day.csv.gz": gzip.compress(HEADER + _row("gz-1", 1) + _row("gz-2", 2)),
        "bz_day.csv.bz2": bz2.compress(HEADER + _row("bz-1", 3)),
        "bom_day.csv": b"\xef\xbb\xbf" + HEADER + _row("bom-1", 4),
        "header_only.csv": HEADER,
        "notes.txt": b"delivered by hand\n",
        "day.csv.zip": b"PK\x03\x04 not really a zip",
        "export.json": b'{"tx_id": "js-1"}\n',
        "truncated.csv.gz": gzip.compress(HEADER + b"".join(_row(f"tr-{i}", i % 24) for i in range(50)))[:-12],
    }
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return files


def _run(tmp_path: Path, *overrides: str) -> dict:
    from pipelines.run import run

    return run(load_config([f"data_dir={tmp_path}", *TINY, *overrides]))


def _table(summary: dict, identifier: str):
    catalog = load_catalog(summary["catalog"]["name"], **summary["catalog"]["properties"])
    return catalog.load_table(identifier).scan().to_arrow()


def test_every_file_is_ingested_skipped_or_refused_with_its_reason_once(tmp_path, ray_session):
    from examples.sample.generate import generate

    cfg = load_config([f"data_dir={tmp_path}", *TINY])
    generate(cfg.sample)
    folder = Path(cfg.sample["output_dir"]) / "transactions"
    days = len(list(folder.iterdir()))
    _landing(folder)

    first = _run(tmp_path)
    assert first["files"]["transactions"] == {**NONE_YET, "found": days + 8, "ingested": days + 3, "rejected": 4,
                                              "empty": 1}
    assert sorted((f["file"].rsplit("/", 1)[1], f["reason"]) for f in first["rejected_files"]) == [
        ("day.csv.zip", "unsupported compression or archive '.zip' (CSV may be compressed with .gz, .bz2)"),
        ("export.json", f"unsupported file type '.json' (this source reads {READS})"),
        ("notes.txt", f"unsupported file type '.txt' (this source reads {READS})"),
        ("truncated.csv.gz", "cannot read csv file: Compressed file ended before the end-of-stream marker was "
                             "reached"),
    ]
    assert (first["status"], first["exit_code"], first["rejections"]) == \
        ("succeeded_with_rejections", 5, {"files": 4, "rows": 0})
    # the compressed and the BOM files' rows reach silver, under their own names
    silver_ids = set(_table(first, "silver.transactions").column("tx_id").to_pylist())
    assert {"gz-1", "gz-2", "bz-1", "bom-1"} <= silver_ids and not any(i.startswith("tr-") for i in silver_ids)
    ledger = _table(first, "quality.files_not_ingested").to_pylist()
    assert sorted((r["uri"].rsplit("/", 1)[1], r["outcome"]) for r in ledger) == [
        ("day.csv.zip", "rejected"), ("export.json", "rejected"), ("header_only.csv", "empty"),
        ("notes.txt", "rejected"), ("truncated.csv.gz", "rejected")]
    # bytes ingested (a metric): the sizes of the files that went into bronze, as they lie on disk
    not_ingested = {r["uri"].rsplit("/", 1)[1] for r in ledger}
    assert first["counts"]["transactions.bytes_ingested"] == sum(
        f.stat().st_size for f in folder.iterdir() if f.name not in not_ingested)
    assert {r["run_id"] for r in ledger} == {first["run_id"]}

    # the same files again: each was judged, none is judged again; nothing new, a clean exit
    second = _run(tmp_path)
    assert second["files"]["transactions"] == {**NONE_YET, "found": days + 8, "already_ingested": days + 3,
                                               "previously_rejected": 4, "previously_empty": 1}
    assert (second["status"], second["exit_code"], second["new_data"]) == ("succeeded", 0, False)
    assert _table(second, "quality.files_not_ingested").num_rows == 5

    # the producer delivers the truncated file again, whole: new content under the same name is judged afresh
    (folder / "truncated.csv.gz").write_bytes(gzip.compress(HEADER + _row("tr-whole", 5)))
    third = _run(tmp_path, "quality.row_count.severity=warn")  # one row: far below the usual day file
    assert third["files"]["transactions"] == {**NONE_YET, "found": days + 8, "ingested": 1,
                                              "already_ingested": days + 3, "previously_rejected": 3,
                                              "previously_empty": 1}
    assert (third["status"], third["exit_code"]) == ("succeeded", 0)
    assert "tr-whole" in set(_table(third, "silver.transactions").column("tx_id").to_pylist())
    # every row of every ingested file is in bronze: the sample's days plus 2 + 1 + 1 rows, then 1
    bronze_rows = _table(third, "bronze.transactions").num_rows
    assert bronze_rows == first["counts"]["transactions.bronze_rows_ingested"] + 1
