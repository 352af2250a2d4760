"""Driver-side file checks: a file the Ray parser would choke on is rejected up front, with a reason;
a usable file reports its columns for the schema policies to judge."""

from __future__ import annotations

from pathlib import Path

from pipelines.config import ColumnConfig, DatasetConfig
import pytest

from pipelines.io.sources import HEADER_ONLY, check_file, file_kind, list_files

COLUMNS = ["tx_id", "amount"]


def checked(tmp_path, name: str, content: bytes):
    (tmp_path / name).write_bytes(content)
    source = DatasetConfig(name="tx", kind="files", columns={c: ColumnConfig() for c in COLUMNS}, key="tx_id",
                           path=str(tmp_path))
    (file,) = [f for f in list_files("tx", source).files if f.path.endswith(name)]
    return check_file(str(tmp_path), file)


READS = ".csv, .csv.gz, .csv.bz2, .parquet, .parq"


@pytest.mark.parametrize("name, formats, kind", [
    ("day.csv", ["csv", "parquet"], ("csv", None, None)),
    ("DAY.CSV.GZ", ["csv", "parquet"], ("csv", "gzip", None)),
    ("day.csv.bz2", ["csv"], ("csv", "bz2", None)),
    ("day.csv.zst", ["csv"],
     (None, None, "unsupported compression or archive '.zst' (CSV may be compressed with .gz, .bz2)")),
    ("day.parq", ["csv", "parquet"], ("parquet", None, None)),
    ("day.parquet", ["csv"], (None, None, "parquet files are not read by this source (formats: ['csv'])")),
    ("day.parquet.gz", ["csv", "parquet"],
     (None, None, "a compressed Parquet file (gzip) is not supported: Parquet compresses inside the file")),
    ("day.csv.zip", ["csv", "parquet"],
     (None, None, "unsupported compression or archive '.zip' (CSV may be compressed with .gz, .bz2)")),
    ("notes.txt", ["csv", "parquet"], (None, None, f"unsupported file type '.txt' (this source reads {READS})")),
    ("README", ["csv", "parquet"], (None, None, f"no file extension (this source reads {READS})")),
    ("day.csv.gz", ["parquet"], (None, None, "csv files are not read by this source (formats: ['parquet'])")),
])
def test_every_file_name_is_read_or_refused_with_its_reason(name, formats, kind):
    assert file_kind(name, formats) == kind


def test_a_byte_order_mark_is_not_part_of_the_first_column_name(tmp_path):
    assert checked(tmp_path, "a.csv", b"\xef\xbb\xbftx_id,amount\nt1,1.00\n") == (None, ["tx_id", "amount"])


def test_a_header_without_rows_is_told_apart_from_a_bad_file(tmp_path):
    assert checked(tmp_path, "a.csv", b"tx_id,amount\n\n") == (HEADER_ONLY, ["tx_id", "amount"])


def test_a_compressed_csv_is_checked_on_its_content(tmp_path):
    import gzip

    assert checked(tmp_path, "a.csv.gz", gzip.compress(b"tx_id,amount\nt1,1.00\n")) == (None, ["tx_id", "amount"])
    reason, _ = checked(tmp_path, "b.csv.gz", gzip.compress(b"tx_id,amount\nt1,1.00\n" * 500)[:-12])
    # truncated: the stream ends inside the gzip member (an error, not fewer rows)
    assert reason == "cannot read csv file: Compressed file ended before the end-of-stream marker was reached"


def test_good_csv_passes_with_its_columns(tmp_path):
    assert checked(tmp_path, "a.csv", b"tx_id,amount\nt1,1.00\n") == (None, ["tx_id", "amount"])


def test_empty_file(tmp_path):
    assert checked(tmp_path, "a.csv", b"") == ("file is empty (0 bytes)", [])


def test_invalid_utf8(tmp_path):
    assert checked(tmp_path, "a.csv", b"tx_id,amount\nt1,\xff\xfe\n") == ("not valid UTF-8 (byte 16)", [])


def test_a_different_column_set_is_left_to_the_schema_policies(tmp_path):
    assert checked(tmp_path, "a.csv", b"tx_id,amt\nt1,1\n") == (None, ["tx_id", "amt"])


def test_duplicate_column_names(tmp_path):
    reason, _ = checked(tmp_path, "a.csv", b"tx_id,amount,amount\nt1,1,2\n")
    assert reason == "duplicate column name(s) ['amount']"


def test_corrupt_parquet(tmp_path):
    reason, _ = checked(tmp_path, "a.parquet", b"PAR1 not really parquet")
    assert reason.startswith("cannot read parquet file:")


def test_names_schema_evolution_could_not_take(tmp_path):
    assert checked(tmp_path, "a.csv", b"tx_id,amount,\nt1,1,x\n")[0] == "empty column name at position 3"
    assert checked(tmp_path, "b.csv", b"tx_id,amount,_run_id\nt1,1,x\n")[0] == \
        "column name(s) ['_run_id'] are reserved for ingest metadata"


EMPTY_QUERY_RUN = """
import datetime as dt, json, sys
from pathlib import Path
import ray
from pipelines import logs, ray_runtime
from pipelines.config import load_config
from pipelines.context import RunContext
from pipelines.io.lake import Lake
from pipelines.stages import bronze

cfg = load_config(sys.argv[1:])
logs.configure(Path(cfg.data_dir) / "logs" / "r1.jsonl")
ray_runtime.start_when_needed(cfg.ray)
lake = Lake(cfg.catalog)
ctx = RunContext(cfg, lake, "r1", dt.datetime.now(dt.timezone.utc), "test", "test")
source = cfg.datasets["users"]
result = bronze.ingest(ctx, "users", source, bronze.plan(ctx, "users", source))
print(json.dumps({"rows": result.rows, "units": result.units, "ray_started": ray.is_initialized(),
                  "snapshot": lake.current_snapshot_id("bronze.users")}))
"""


def test_an_empty_query_result_commits_nothing_and_starts_no_ray(tmp_path):
    import json
    import sqlite3
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    with sqlite3.connect(tmp_path / "app.db") as db:
        db.execute("CREATE TABLE users (user_id INTEGER, email TEXT, full_name TEXT, phone TEXT, birth_date TEXT, "
                   "country TEXT, signup_ts TEXT)")
    out = subprocess.run([sys.executable, "-c", EMPTY_QUERY_RUN, f"data_dir={tmp_path}",
                          f"datasets.users.uri=sqlite:///{tmp_path / 'app.db'}"],
                         capture_output=True, text=True, cwd=root, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"rows": 0, "units": [], "ray_started": False,
                                                               "snapshot": None}
    assert '"event": "query returned no rows, nothing to ingest"' in out.stderr


def _sql_source(db, query: str, columns) -> DatasetConfig:
    return DatasetConfig(name="people", kind="sql", uri=f"sqlite:///{db}", query=query,
                         columns={c: ColumnConfig() for c in columns}, key=list(columns)[0])


def test_a_query_column_of_mixed_types_is_read_as_text_value_by_value(tmp_path):
    import sqlite3

    from pipelines.io.sources import read_query

    with sqlite3.connect(tmp_path / "app.db") as db:  # SQLite keeps each value's own type
        db.execute("CREATE TABLE users (user_id INTEGER, phone)")
        db.executemany("INSERT INTO users VALUES (?, ?)", [(1, 441234), (2, "+44 1234"), (3, None), (4, 2.5)])
    got = read_query("users", _sql_source(tmp_path / "app.db", "SELECT user_id, phone FROM users ORDER BY user_id",
                                          ["user_id", "phone", "country"]))
    assert got.to_pydict() == {"user_id": ["1", "2", "3", "4"], "phone": ["441234", "+44 1234", None, "2.5"],
                               "country": [None, None, None, None]}


def test_a_query_value_arrow_cannot_hold_is_a_one_line_error(tmp_path):
    import sqlite3

    import pytest

    from pipelines.errors import SourceError
    from pipelines.io.sources import read_query

    with sqlite3.connect(tmp_path / "app.db") as db:
        db.execute("CREATE TABLE users (user_id INTEGER)")
        db.execute("INSERT INTO users VALUES (?)", (2**63 - 1,))
        db.execute("INSERT INTO users VALUES (?)", (-(2**63),))
    source = _sql_source(tmp_path / "app.db", "SELECT user_id FROM users", ["user_id"])
    assert read_query("users", source).column("user_id").to_pylist() == [str(2**63 - 1), str(-(2**63))]
    with sqlite3.connect(tmp_path / "app.db") as db:
        db.execute("CREATE TABLE blobs (user_id)")
        db.execute("INSERT INTO blobs VALUES (?)", (b"\xff\xfe",))
    with pytest.raises(SourceError) as failure:
        read_query("users", _sql_source(tmp_path / "app.db", "SELECT user_id FROM blobs", ["user_id"]))
    assert str(failure.value).startswith("source 'users': column 'user_id' of the query result cannot be read as text:")
    assert "\n" not in str(failure.value)
