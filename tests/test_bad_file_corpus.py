"""A corpus of bad input files, each dropped alone into the sample's landing directory and followed by
`medallion run` (the command's own entry point, in this process): every valid row reaches silver, every bad
row is quarantined under its rule (or dropped as an exact duplicate), every refused file gets one line with
its reason, the rows add up per run, and the exit code says which outcome it was:
0 clean, 5 a file rejected, 6 rows quarantined (`exit_codes.quarantined_rows=6`), 2 the run stopped
(a schema change under freeze: nothing written; the file is then taken away, as its producer would)."""

from __future__ import annotations

import bz2
import gzip
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyiceberg.catalog import load_catalog

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
TINY = ["sample.n_transactions=400", "sample.n_users=30", "sample.days=3", "sample.n_merchants=10",
        "sample.dirt_fraction=0", "features.sets=[]", "quality.row_count.severity=warn",
        "exit_codes.quarantined_rows=6"]
HEADER = "tx_id,user_id,merchant_id,amount,currency,channel,ts"
READS = ".csv, .csv.gz, .csv.bz2, .parquet, .parq"


def line(tx_id: str, user="1", merchant="1", amount="5.00", currency="EUR", channel="web",
         ts="2026-01-02T10:00:00Z") -> str:
    return ",".join([tx_id, user, merchant, amount, currency, channel, ts])


def csv(*lines: str, header: str = HEADER, end: str = "\n") -> bytes:
    return end.join([header, *lines]).encode() + end.encode()


def parquet(columns: Dict[str, pa.Array]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table(columns), sink)
    return sink.getvalue()


def typed(ids, amounts=None, ts=None, **extra) -> Dict[str, pa.Array]:
    n = len(ids)
    return {"tx_id": pa.array(ids, pa.string()), "user_id": pa.array([1] * n, pa.int64()),
            "merchant_id": pa.array([1] * n, pa.int64()),
            "amount": amounts if amounts is not None else pa.array(["5.00"] * n),
            "currency": pa.array(["EUR"] * n), "channel": pa.array(["web"] * n),
            "ts": ts if ts is not None else pa.array([1767348000000000] * n, pa.timestamp("us", tz="UTC")),
            **extra}


def corrupt_page() -> bytes:
    """A Parquet file whose footer reads but whose first data page does not: only reading the data finds it."""
    ids = [f"c59-{i}" for i in range(2000)]
    sink = io.BytesIO()
    pq.write_table(pa.table(typed(ids)), sink, compression="snappy")
    data = bytearray(sink.getvalue())
    start = pq.ParquetFile(io.BytesIO(bytes(data))).metadata.row_group(0).column(0).data_page_offset
    data[start + 40:start + 200] = b"\xab" * 160
    return bytes(data)


VALID = None  # a row's expected outcome: reaches silver
DUPLICATE = "duplicate"  # dropped as an exact copy of a row silver keeps


@dataclass
class Case:
    name: str
    files: Dict[str, bytes]
    rows: Dict[str, Optional[str]] = field(default_factory=dict)  # tx_id -> VALID, DUPLICATE or the rule(s)
    refused: Optional[str] = None  # the start of a rejected file's reason (or a part of a stopped run's line)
    outcome: str = "ingested"  # ingested | rejected | empty | stopped
    bronze: Optional[int] = None  # rows the file holds (default: one per entry of `rows`)
    quarantined: Optional[int] = None  # of them, quarantined (default: the entries of `rows` with a rule)
    unkeyed: Optional[str] = None  # the rule of the quarantined rows without a tx_id

    def __post_init__(self):
        if self.bronze is None:
            self.bronze = len(self.rows)
        if self.quarantined is None:
            self.quarantined = sum(r not in (VALID, DUPLICATE) for r in self.rows.values())

    @property
    def exit_code(self) -> int:
        if self.outcome == "stopped":
            return 2
        if self.outcome == "rejected":
            return 5
        return 6 if self.quarantined else 0


def cases() -> list:
    big = "".join(line(f"trunc-{i}", ts=f"2026-01-02T{i % 24:02d}:00:00Z") + "\n" for i in range(40))
    out = [
        # --- CSV: files refused whole ---------------------------------------------------------------------
        Case("empty", {"c01.csv": b""}, refused="file is empty (0 bytes)", outcome="rejected"),
        Case("not_utf8", {"c02.csv": csv(line("c02-1")) + b"c02-2,1,1,5.00,EUR,w\xe9b,2026-01-02T10:00:00Z\n"},
             refused="not valid UTF-8 (byte ", outcome="rejected"),
        Case("latin1_header", {"c03.csv": "tx_id,user_id,merchant_id,amount,currency,channel,ts,r\xe9gion\n"
                                          .encode("latin-1") + line("c03-1").encode() + b",x\n"},
             refused="not valid UTF-8 (byte ", outcome="rejected"),
        Case("no_header", {"c04.csv": b"\n" + csv(line("c04-1"), header="")},
             refused="file has no header line", outcome="rejected"),
        Case("duplicate_column", {"c05.csv": csv(line("c05-1") + ",9", header=HEADER + ",amount")},
             refused="duplicate column name(s) ['amount']", outcome="rejected"),
        Case("empty_column_name", {"c06.csv": csv(line("c06-1") + ",9", header=HEADER + ",")},
             refused="empty column name at position 8", outcome="rejected"),
        Case("reserved_column", {"c07.csv": csv(line("c07-1") + ",9", header=HEADER + ",_run_id")},
             refused="column name(s) ['_run_id'] are reserved for ingest metadata", outcome="rejected"),
        Case("text_extension", {"c08.txt": csv(line("c08-1"))},
             refused=f"unsupported file type '.txt' (this source reads {READS})", outcome="rejected"),
        Case("json", {"c09.json": b'[{"tx_id": "c09-1"}]'},
             refused=f"unsupported file type '.json' (this source reads {READS})", outcome="rejected"),
        Case("no_extension", {"c10": csv(line("c10-1"))},
             refused=f"no file extension (this source reads {READS})", outcome="rejected"),
        Case("zip", {"c11.csv.zip": b"PK\x03\x04" + b"\x00" * 30},
             refused="unsupported compression or archive '.zip' (CSV may be compressed with .gz, .bz2)",
             outcome="rejected"),
        Case("xz", {"c12.csv.xz": b"\xfd7zXZ\x00" + b"\x00" * 20},
             refused="unsupported compression or archive '.xz' (CSV may be compressed with .gz, .bz2)",
             outcome="rejected"),
        Case("header_only", {"c13.csv": csv()}, outcome="empty"),
        # --- CSV: a changed schema (silver frozen by default): the run stops before writing anything ------
        Case("extra_column", {"c14.csv": csv(line("c14-1") + ",SAVE10", header=HEADER + ",coupon")},
             refused="has new column(s) ['coupon'], and silver.transactions is frozen", outcome="stopped"),
        Case("missing_column", {"c15.csv": csv("c15-1,1,1,5.00,EUR,2026-01-02T10:00:00Z",
                                               header="tx_id,user_id,merchant_id,amount,currency,ts")},
             refused="has missing column(s) ['channel'], and silver.transactions is frozen", outcome="stopped"),
        # --- CSV: bad rows, each under its rule --------------------------------------------------------
        Case("too_many_fields", {"c16.csv": csv(line("c16-1"), line("c16-2") + ",extra")},
             rows={"c16-1": VALID}, bronze=2, quarantined=1, unkeyed="line_well_formed"),  # a line, not a row
        Case("too_few_fields", {"c17.csv": csv(line("c17-1"), "c17-2,1,1")}, rows={"c17-1": VALID}, bronze=2,
             quarantined=1, unkeyed="line_well_formed"),
        Case("bad_timestamp", {"c18.csv": csv(line("c18-1", ts="02/01/2026 10:00"))}, rows={"c18-1": "ts_parseable"}),
        Case("epoch_zero", {"c19.csv": csv(line("c19-1", ts="1970-01-01T00:00:00Z"))}, rows={"c19-1": "ts_not_before"}),
        Case("after_cutoff", {"c20.csv": csv(line("c20-1", ts="2026-01-05T00:00:00Z"))},
             rows={"c20-1": "ts_not_after_cutoff"}),
        Case("zone_less_is_utc", {"c21.csv": csv(line("c21-1", ts="2026-01-02T10:00:00"))}, rows={"c21-1": VALID}),
        Case("offset_zone", {"c22.csv": csv(line("c22-1", ts="2026-01-02T10:00:00+02:00"))}, rows={"c22-1": VALID}),
        Case("negative_amount", {"c23.csv": csv(line("c23-1", amount="-5.00"))}, rows={"c23-1": "amount_in_range"}),
        Case("three_decimals", {"c24.csv": csv(line("c24-1", amount="5.001"))}, rows={"c24-1": "amount_parseable"}),
        Case("amount_text", {"c25.csv": csv(line("c25-1", amount="five"))}, rows={"c25-1": "amount_parseable"}),
        Case("unknown_currency", {"c26.csv": csv(line("c26-1", currency="XXX"))}, rows={"c26-1": "currency_known"}),
        Case("unknown_channel", {"c27.csv": csv(line("c27-1", channel="fax"))}, rows={"c27-1": "channel_known"}),
        Case("missing_user", {"c28.csv": csv(line("c28-1", user=""))}, rows={"c28-1": "user_id_present"}),
        Case("user_not_a_number", {"c29.csv": csv(line("c29-1", user="u1"))}, rows={"c29-1": "user_id_parseable"}),
        Case("unknown_user", {"c30.csv": csv(line("c30-1", user="99999"))}, rows={"c30-1": "user_id_known"}),
        Case("merchant_missing", {"c31.csv": csv(line("c31-1", merchant=""))}, rows={"c31-1": "merchant_id_parseable"}),
        Case("several_rules", {"c32.csv": csv(line("c32-1", amount="0", currency="XXX", channel="fax"))},
             rows={"c32-1": "amount_in_range;currency_known;channel_known"}),
        Case("exact_copy_in_file", {"c33.csv": csv(line("c33-1"), line("c33-1"))}, rows={"c33-1": VALID}, bronze=2),
        Case("conflict_in_file", {"c34.csv": csv(line("c34-1", amount="5.00"), line("c34-1", amount="6.00"))},
             rows={"c34-1": "key_conflict"}, bronze=2, quarantined=2),  # two contents, no first: both
        Case("crlf", {"c35.csv": csv(line("c35-1"), line("c35-2"), end="\r\n")}, rows={"c35-1": VALID, "c35-2": VALID}),
        Case("quoted_fields", {"c36.csv": csv('"c36-1","1","1","5.00","EUR","web","2026-01-02T10:00:00Z"')},
             rows={"c36-1": VALID}),
        Case("blank_lines", {"c37.csv": csv(line("c37-1"), "", line("c37-2"))}, rows={"c37-1": VALID, "c37-2": VALID}),
        Case("bom", {"c38.csv": b"\xef\xbb\xbf" + csv(line("c38-1"))}, rows={"c38-1": VALID}),
        # re-deliveries of an earlier case's row: the same content is a duplicate, other content a conflict
        Case("redelivered_copy", {"c39.csv": csv(line("c38-1"))}, rows={"c38-1": DUPLICATE}),
        Case("redelivered_changed", {"c40.csv": csv(line("c35-1", amount="7.00"))}, rows={"c35-1": "key_conflict"}),
        # --- compressed CSV ------------------------------------------------------------------------------
        Case("gzip", {"c41.csv.gz": gzip.compress(csv(line("c41-1"), line("c41-2", currency="XXX")))},
             rows={"c41-1": VALID, "c41-2": "currency_known"}),
        Case("bzip2", {"c42.csv.bz2": bz2.compress(csv(line("c42-1")))}, rows={"c42-1": VALID}),
        Case("gzip_truncated", {"c43.csv.gz": gzip.compress((HEADER + "\n" + big).encode())[:-12]},
             refused="cannot read csv file: Compressed file ended before the end-of-stream marker was reached",
             outcome="rejected"),
        Case("gzip_not_gzip", {"c44.csv.gz": csv(line("c44-1"))},
             refused="cannot read csv file: Not a gzipped file", outcome="rejected"),
        Case("gzip_not_utf8", {"c45.csv.gz": gzip.compress(csv(line("c45-1")) + b"\xff\n")},
             refused="not valid UTF-8 (byte ", outcome="rejected"),
        Case("gzip_header_only", {"c46.csv.gz": gzip.compress(csv())}, outcome="empty"),
        Case("gzip_bom", {"c47.csv.gz": gzip.compress(b"\xef\xbb\xbf" + csv(line("c47-1")))}, rows={"c47-1": VALID}),
        Case("compressed_parquet", {"c48.parquet.gz": gzip.compress(parquet(typed(["c48-1"])))},
             refused="a compressed Parquet file (gzip) is not supported: Parquet compresses inside the file",
             outcome="rejected"),
        # --- Parquet -------------------------------------------------------------------------------------
        Case("parquet_typed", {"c49.parquet": parquet(typed(["c49-1", "c49-2"]))}, rows={"c49-1": VALID, "c49-2": VALID}),
        Case("parquet_not_parquet", {"c50.parquet": b"PAR1 this is not a parquet file"},
             refused="cannot read parquet file: ", outcome="rejected"),
        Case("parquet_truncated", {"c51.parquet": parquet(typed(["c51-1"]))[:-20]},
             refused="cannot read parquet file: ", outcome="rejected"),
        Case("parquet_corrupt_page", {"c59.parquet": corrupt_page()},
             refused="cannot read parquet file: OSError: ", outcome="rejected"),  # found reading its data
        Case("parquet_nested_column", {"c60.parquet": parquet(typed(["c60-1"], tags=pa.array([["a", "b"]])))},
             refused="column(s) of a type bronze cannot hold as text: tags (list<element: string>)", outcome="rejected"),
        Case("parquet_zero_rows", {"c52.parquet": parquet(typed([]))}, outcome="empty"),
        Case("parquet_extra_column", {"c53.parquet": parquet(typed(["c53-1"], coupon=pa.array(["X"])))},
             refused="has new column(s) ['coupon'], and silver.transactions is frozen", outcome="stopped"),
        Case("parquet_amount_text", {"c54.parquet": parquet(typed(["c54-1", "c54-2"], amounts=pa.array(["5.00", "5,00"])))},
             rows={"c54-1": VALID, "c54-2": "amount_parseable"}),
        Case("parquet_null_key", {"c55.parquet": parquet(typed([None, "c55-2"]))}, rows={"c55-2": VALID}, bronze=2,
             quarantined=1, unkeyed="tx_id_present"),
        Case("parquet_epoch_zero", {"c56.parquet": parquet(typed(["c56-1"], ts=pa.array([0], pa.timestamp("us", tz="UTC"))))},
             rows={"c56-1": "ts_not_before"}),
        Case("parquet_ns_timestamps", {"c57.parquet": parquet(typed(
            ["c57-1"], ts=pa.array([1767348000123456789], pa.timestamp("ns", tz="UTC"))))}, rows={"c57-1": VALID}),
        Case("parquet_naive_timestamps", {"c58.parquet": parquet(typed(
            ["c58-1"], ts=pa.array([1767348000000000], pa.timestamp("us"))))}, rows={"c58-1": VALID}),
    ]
    return out


@pytest.fixture(scope="module")
def landing(tmp_path_factory, ray_session):
    from examples.sample.generate import generate
    from pipelines.cli import main
    from pipelines.config import load_config

    data_dir = tmp_path_factory.mktemp("corpus")
    cfg = load_config([f"data_dir={data_dir}", *TINY])
    generate(cfg.sample)
    assert main(["run", f"data_dir={data_dir}", *TINY]) == 0
    return data_dir, Path(cfg.sample["output_dir"]) / "transactions"


def _tables(summary: dict) -> Dict[str, pa.Table]:
    catalog = load_catalog(summary["catalog"]["name"], **summary["catalog"]["properties"])
    return {t: catalog.load_table(t).scan().to_arrow() for t in ("silver.transactions", "quarantine.transactions")}


def test_the_corpus_has_at_least_40_kinds_across_csv_compressed_csv_and_parquet():
    names = [c.name for c in cases()]
    assert len(names) == len(set(names)) >= 40
    files = [f for c in cases() for f in c.files]
    assert any(f.endswith(".csv") for f in files) and any(f.endswith((".gz", ".bz2")) for f in files) \
        and any(".parquet" in f for f in files)


def test_each_bad_file_alone_ends_as_expected(landing, capsys):
    from pipelines.cli import main

    data_dir, folder = landing
    capsys.readouterr()
    problems = []
    for case in cases():
        for name, content in case.files.items():
            (folder / name).write_bytes(content)
        code = main(["run", f"data_dir={data_dir}", *TINY])
        out, err = capsys.readouterr()
        problems += _judge(case, code, out, err)
        if case.outcome == "stopped":  # its producer takes it back; nothing was written meanwhile
            for name in case.files:
                (folder / name).unlink()
    assert problems == [], "\n".join(map(repr, problems))


def _judge(case: Case, code: int, out: str, err: str) -> list:
    where = case.name
    if code != case.exit_code:
        return [(where, "exit code", code, case.exit_code, err[-1500:])]
    if case.outcome == "stopped":
        errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
        return [] if len(errors) == 1 and case.refused in errors[0] else [(where, "error line", errors)]
    summary = json.loads(out.strip().splitlines()[-1])
    problems = []
    files = summary["files"]["transactions"]
    judged = {k: files[k] for k in ("ingested", "rejected", "empty")}
    want = {"ingested": 0, "rejected": 0, "empty": 0, case.outcome: len(case.files)}
    if judged != want:
        problems.append((where, "files", judged, want))
    if case.outcome == "rejected":
        reasons = [r["reason"] for r in summary["rejected_files"]]
        if len(reasons) != 1 or not reasons[0].startswith(case.refused):  # type: ignore[arg-type]
            problems.append((where, "reason", reasons, case.refused))
        if summary["status"] != "succeeded_with_rejections":
            problems.append((where, "status", summary["status"]))
        return problems
    counts = summary["counts"]
    ingested = counts.get("transactions.bronze_rows_ingested", 0)
    added = counts.get("transactions.silver_rows_added", 0)
    quarantined = counts.get("transactions.quarantined", 0)
    duplicates = counts.get("transactions.duplicates_dropped", 0)
    if ingested != added + quarantined + duplicates:
        problems.append((where, "rows do not add up", ingested, added, quarantined, duplicates))
    if case.outcome == "empty":
        return problems + ([(where, "rows of an empty file", ingested)] if ingested else [])
    if (ingested, quarantined) != (case.bronze, case.quarantined):
        problems.append((where, "bronze rows, quarantined", (ingested, quarantined), (case.bronze, case.quarantined)))
    tables = _tables(summary)
    silver = set(tables["silver.transactions"].column("tx_id").to_pylist())
    mine = [q for q in tables["quarantine.transactions"].to_pylist()
            if q["_source_file"].rsplit("/", 1)[1] in case.files]
    for tx_id, rule in case.rows.items():
        rules = sorted(q["_failed_rules"] for q in mine if q["tx_id"] == tx_id)
        if rule is VALID and (tx_id not in silver or rules):
            problems.append((where, tx_id, "not in silver", rules))
        elif rule == DUPLICATE and (rules or duplicates != 1):
            problems.append((where, tx_id, "not a duplicate", rules, duplicates))
        elif rule not in (VALID, DUPLICATE) and (not rules or set(rules) != {rule}):
            problems.append((where, tx_id, "rule", rules, rule))
    if case.unkeyed and [q["_failed_rules"] for q in mine if not q["tx_id"]] != [case.unkeyed]:
        problems.append((where, "unkeyed rows", [(q["tx_id"], q["_failed_rules"]) for q in mine]))
    return problems
