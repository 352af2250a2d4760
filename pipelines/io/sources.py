"""Reading sources into Ray datasets of bronze rows: every source column as text, plus ingest metadata.

Files are listed and fingerprinted (sha256 of the content) on the driver through `pyarrow.fs`, so a path
may be local or on object storage. Each file is then parsed inside a Ray task: nothing assumes that the
workers share the driver's disk beyond what the path itself says. Malformed CSV lines are not dropped:
they become bronze rows whose `_malformed_line` holds the raw text, so silver can quarantine them.
A SQL source's result is read in the driver (`read_query`): one query is one read.
"""

from __future__ import annotations

import bz2
import datetime as dt
import gzip
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
import sqlalchemy

from pipelines import ray_runtime
from pipelines.config import DatasetConfig
from pipelines.errors import SourceError
from pipelines.io import row_hash

METADATA_FIELDS = [
    pa.field("_malformed_line", pa.string()),
    pa.field("_source", pa.string()),
    pa.field("_source_file", pa.string()),
    pa.field("_source_file_sha256", pa.string()),
    pa.field("_ingested_at", pa.timestamp("us", tz="UTC")),
    pa.field("_run_id", pa.string()),
    pa.field("_row_hash", pa.string()),
]
RESERVED_COLUMNS = {f.name for f in METADATA_FIELDS} | {"_failed_rules"}
EXTENSIONS = {"csv": (".csv",), "parquet": (".parquet", ".parq")}
# A CSV file may arrive compressed as a whole (Parquet compresses inside the file): by its last suffix.
COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2"}
# Python's own decompressors: a truncated file is an error (EOFError), never a shorter file (pyarrow's
# compressed streams return what they got, and the rest of the rows would be lost without a word).
DECOMPRESS = {"gzip": gzip.decompress, "bz2": bz2.decompress}
ARCHIVES = (".zip", ".7z", ".tar", ".tgz", ".rar", ".xz", ".zst", ".lz4", ".lzma", ".z", ".snappy")
BOM = b"\xef\xbb\xbf"  # what spreadsheet programs put before a UTF-8 CSV's header


def bronze_schema(source: DatasetConfig, extras: Sequence[str] = ()) -> pa.Schema:
    """The declared columns as text, the ingest metadata, then any columns bronze evolved to hold."""
    return pa.schema([pa.field(c, pa.string()) for c in source.column_names] + METADATA_FIELDS
                     + [pa.field(c, pa.string()) for c in extras])


def data_columns(schema: pa.Schema) -> List[str]:
    metadata = {f.name for f in METADATA_FIELDS}
    return [n for n in schema.names if n not in metadata and n != "_failed_rules"]


@dataclass(frozen=True)
class SourceFile:
    path: str  # as the filesystem names it (absolute path or bucket/key)
    uri: str  # what is recorded in `_source_file`
    format: str
    size: int
    sha256: str
    compression: Optional[str] = None  # of a CSV file compressed as a whole (COMPRESSIONS)


@dataclass(frozen=True)
class RejectedFile:
    uri: str
    sha256: str
    reason: str


@dataclass
class Listing:
    """Every file under a source's location: those it can read, and the others with the reason."""

    files: List[SourceFile]
    unreadable: List[RejectedFile]


def _filesystem(path: str) -> Tuple[pafs.FileSystem, str]:
    if "://" not in path:
        path = str(Path(path).resolve())
    return pafs.FileSystem.from_uri(path if "://" in path else f"file://{path}")


def file_kind(file_name: str, formats: Sequence[str]) -> Tuple[Optional[str], Optional[str], Optional[str]]:
    """(format, compression, None) for a file this source reads, or (None, None, why not)."""
    name = file_name.lower()
    compression = next((c for suffix, c in COMPRESSIONS.items() if name.endswith(suffix)), None)
    if compression:
        name = name.rsplit(".", 1)[0]
    fmt = next((f for f, suffixes in EXTENSIONS.items() if name.endswith(suffixes)), None)
    readable = [s + c for f in formats for s in EXTENSIONS[f] for c in ([""] + list(COMPRESSIONS) if f == "csv" else [""])]
    if fmt is not None and fmt not in formats:
        return None, None, f"{fmt} files are not read by this source (formats: {list(formats)})"
    if fmt == "parquet" and compression:
        return None, None, f"a compressed Parquet file ({compression}) is not supported: Parquet compresses inside the file"
    if fmt is not None:
        return fmt, compression, None
    if "." not in name:
        return None, None, f"no file extension (this source reads {', '.join(readable)})"
    suffix = "." + name.rsplit(".", 1)[1]
    if suffix in ARCHIVES:
        return None, None, f"unsupported compression or archive {suffix!r} (CSV may be compressed with " \
                           f"{', '.join(COMPRESSIONS)})"
    return None, None, f"unsupported file type {suffix!r} (this source reads {', '.join(readable)})"


def list_files(name: str, source: DatasetConfig) -> Listing:
    """Every file under the source's location, sorted by path, with its content hash: the ones it reads
    (by extension and declared formats) and the others with the reason, none left out."""
    fs, root = _filesystem(source.path or "")
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise SourceError(f"source {name!r}: path {source.path} does not exist")
    selector = pafs.FileSelector(root, recursive=True) if info.type == pafs.FileType.Directory else None
    infos = fs.get_file_info(selector) if selector else [info]
    scheme = (source.path or "").split("://", 1)[0] if "://" in (source.path or "") else ""
    listing = Listing([], [])
    for entry in sorted(infos, key=lambda i: i.path):
        if entry.type != pafs.FileType.File:
            continue
        uri = f"{scheme}://{entry.path}" if scheme and scheme != "file" else entry.path
        sha = _sha256(fs, entry.path)
        fmt, compression, reason = file_kind(entry.base_name, source.formats)
        if reason:
            listing.unreadable.append(RejectedFile(uri, sha, reason))
        else:
            listing.files.append(SourceFile(entry.path, uri, fmt, entry.size, sha, compression))  # type: ignore[arg-type]
    return listing


def _sha256(fs: pafs.FileSystem, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open_input_stream(path, compression=None) as stream:  # the bytes as stored
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


HEADER_ONLY = "no data rows (a header only)"


def read_bytes(fs: pafs.FileSystem, file: SourceFile) -> bytes:
    """A CSV file's content, decompressed, without a leading byte-order mark."""
    with fs.open_input_stream(file.path, compression=None) as stream:
        content = stream.read()
    if file.compression:
        content = DECOMPRESS[file.compression](content)
    return content[len(BOM):] if content.startswith(BOM) else content


def check_file(source_path: str, file: SourceFile) -> Tuple[Optional[str], List[str]]:
    """(why the file cannot be ingested at all or None, its column names): cheap checks on the driver.
    A column set that differs from the declared one is not a reason here: the schema policies decide.
    A file with columns but no rows gets the reason HEADER_ONLY (accounted for, not an error)."""
    if file.size == 0:
        return "file is empty (0 bytes)", []
    fs, _ = _filesystem(source_path)
    try:
        if file.format == "parquet":
            with fs.open_input_file(file.path) as handle:
                parquet = pq.ParquetFile(handle)
                names, rows = parquet.schema_arrow.names, parquet.metadata.num_rows
                untextual = [f"{f.name} ({f.type})" for f in parquet.schema_arrow if not _textual(f.type)]
            if untextual:  # bronze holds text: a nested or binary value has no exact text form
                return f"column(s) of a type bronze cannot hold as text: {', '.join(untextual)}", names
        else:
            content = read_bytes(fs, file)
            try:  # the parser in the Ray task would fail on it half-way through the ingest
                text = content.decode("utf-8")
            except UnicodeDecodeError as exc:
                return f"not valid UTF-8 (byte {exc.start})", []
            lines = text[: 64 * 1024].splitlines()
            if not lines or not lines[0].strip():
                return "file has no header line", []
            names = [n.strip() for n in lines[0].split(",")]
            rows = int(any(line.strip() for line in lines[1:]) or len(text) > 64 * 1024)
    except Exception as exc:  # any parse failure of the footer/header means the file is unusable
        return f"cannot read {file.format} file: {str(exc).splitlines()[0]}", []
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        return f"duplicate column name(s) {duplicated}", names
    if "" in names:  # schema evolution could not name such a column
        return f"empty column name at position {names.index('') + 1}", names
    reserved = sorted(set(names) & RESERVED_COLUMNS)
    if reserved:  # would collide with the ingest metadata bronze adds
        return f"column name(s) {reserved} are reserved for ingest metadata", names
    if not rows:
        return HEADER_ONLY, names
    return None, names


def _textual(kind: pa.DataType) -> bool:
    """Whether a Parquet column's values have one exact text form (what `_as_text` writes)."""
    if pa.types.is_dictionary(kind):
        return _textual(kind.value_type)
    return any(check(kind) for check in (pa.types.is_string, pa.types.is_large_string, pa.types.is_integer,
                                         pa.types.is_floating, pa.types.is_decimal, pa.types.is_boolean,
                                         pa.types.is_date, pa.types.is_timestamp, pa.types.is_time,
                                         pa.types.is_null))


def _as_text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_timestamp(column.type) and column.type.unit == "ns":
        # nanoseconds (pandas' default) written out whole: bronze keeps what arrived; silver's microsecond
        # timestamps drop the last three digits (a cast to microseconds here failed the whole ingest)
        return pc.strftime(column.cast(pa.timestamp("ns", tz="UTC")), format="%Y-%m-%dT%H:%M:%SZ")
    if pa.types.is_timestamp(column.type):
        # ISO-8601 with microseconds and an explicit UTC designator: what silver parses back
        return timestamp_text(column.cast(pa.timestamp("us", tz="UTC")))
    return column.cast(pa.string())


def _digits(out: np.ndarray, first: int, width: int, values: np.ndarray) -> None:
    for place in range(width):  # the last digit first
        out[:, first + width - 1 - place] = 48 + (values // 10 ** place) % 10


def timestamp_text(utc: pa.ChunkedArray) -> pa.ChunkedArray:
    """UTC microsecond timestamps as "YYYY-MM-DDTHH:MM:SS.ffffffZ", exactly as Arrow's
    `strftime("%Y-%m-%dT%H:%M:%SZ")` writes them, but written digit by digit with numpy: strftime takes
    ~3 us a value (0.3 s of a 111k-row day file). Years outside 1000..9999 take strftime itself."""
    micros = utc.cast(pa.int64()).combine_chunks()
    valid = micros.is_valid().to_numpy(zero_copy_only=False)
    us = micros.fill_null(0).to_numpy(zero_copy_only=False).astype("datetime64[us]")
    years = us.astype("datetime64[Y]").astype(np.int64) + 1970
    if len(us) == 0 or years[valid].min(initial=2000) < 1000 or years[valid].max(initial=2000) > 9999:
        return pc.strftime(utc, format="%Y-%m-%dT%H:%M:%SZ")
    month_start = us.astype("datetime64[M]")
    day_start = us.astype("datetime64[D]")
    of_day = (us - day_start).astype(np.int64)  # microseconds since midnight
    out = np.frombuffer(b"0000-00-00T00:00:00.000000Z" * len(us), np.uint8).reshape(-1, 27).copy()
    _digits(out, 0, 4, years)
    _digits(out, 5, 2, month_start.astype(np.int64) % 12 + 1)
    _digits(out, 8, 2, (day_start - month_start.astype("datetime64[D]")).astype(np.int64) + 1)
    _digits(out, 11, 2, of_day // 3_600_000_000)
    _digits(out, 14, 2, of_day // 60_000_000 % 60)
    _digits(out, 17, 2, of_day // 1_000_000 % 60)
    _digits(out, 20, 6, of_day % 1_000_000)
    text = row_hash.fixed_width_text(out)
    if not valid.all():
        text = pc.if_else(pa.array(valid), text, pa.scalar(None, pa.string()))
    return text


def _parse_csv(data: bytes, names: List[str]) -> pa.Table:
    """Every column of the file as text; lines that do not parse are kept whole in `_malformed_line`."""
    malformed: List[str] = []

    def keep_bad_line(row) -> str:
        malformed.append(row.text)
        return "skip"

    table = pacsv.read_csv(
        io.BytesIO(data),
        read_options=pacsv.ReadOptions(use_threads=False),
        parse_options=pacsv.ParseOptions(invalid_row_handler=keep_bad_line),
        convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in names},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    bad = pa.table({c: pa.nulls(len(malformed), pa.string()) for c in table.column_names})
    good = table.append_column("_malformed_line", pa.nulls(table.num_rows, pa.string()))
    bad = bad.append_column("_malformed_line", pa.array(malformed, pa.string()))
    return pa.concat_tables([good, bad])


def _read_file_block(batch: Dict[str, list], declared: List[str], expected: List[str], policy: str, source: str,
                     run_id: str, ingested_at: dt.datetime, schema: pa.Schema) -> pa.Table:
    """Ray task body: one file in, its bronze rows out (shaped by the bronze schema policy)."""
    from validation.schema_policy import conform

    tables = []
    for path, uri, fmt, sha, root, names, compression in zip(
            batch["path"], batch["uri"], batch["format"], batch["sha256"], batch["root"], batch["columns"],
            batch["compression"]):
        fs, _ = _filesystem(root)
        if fmt == "csv":
            file = SourceFile(path, uri, fmt, 0, sha, compression or None)
            table = _parse_csv(read_bytes(fs, file), list(names))
        else:
            with fs.open_input_file(path) as handle:
                raw = pq.read_table(handle)
            table = pa.table({c: _as_text(raw.column(c)) for c in raw.column_names})
            table = table.append_column("_malformed_line", pa.nulls(table.num_rows, pa.string()))
        data = conform(table.drop_columns(["_malformed_line"]), expected, policy)
        data = data.append_column("_malformed_line", table.column("_malformed_line"))
        tables.append(with_metadata(data, declared, source, uri, sha, run_id, ingested_at, schema))
    return pa.concat_tables(tables) if tables else schema.empty_table()


def with_metadata(table: pa.Table, columns: List[str], source: str, source_file: str, sha256: str, run_id: str,
                  ingested_at: dt.datetime, schema: pa.Schema) -> pa.Table:
    """Bronze rows in `schema`'s column order. The row hash covers the declared `columns` and the
    malformed line, so evolving a table does not change the hash of rows that were already there."""
    n = table.num_rows
    hashes = row_hash.row_hashes(table, columns + ["_malformed_line"])
    metadata = {
        "_source": pa.array([source] * n, pa.string()),
        "_source_file": pa.array([source_file] * n, pa.string()),
        "_source_file_sha256": pa.array([sha256] * n, pa.string()),
        "_ingested_at": pa.array([ingested_at] * n, pa.timestamp("us", tz="UTC")),
        "_run_id": pa.array([run_id] * n, pa.string()),
        "_row_hash": hashes,
    }
    return pa.table({f.name: metadata[f.name] if f.name in metadata
                     else table.column(f.name) if f.name in table.column_names
                     else pa.nulls(n, f.type) for f in schema}, schema=schema)


def read_files(name: str, source: DatasetConfig, files: List[SourceFile], columns_by_file: Dict[str, List[str]],
               expected: List[str], policy: str, schema: pa.Schema, run_id: str,
               ingested_at: dt.datetime) -> ray.data.Dataset:
    """One Ray task per file; the dataset's rows are bronze rows. `expected` are the table's data columns
    (declared plus evolved) and `policy` the bronze schema policy for columns beyond them."""
    ray_runtime.ensure()
    items = [{"path": f.path, "uri": f.uri, "format": f.format, "sha256": f.sha256, "root": source.path,
              "columns": columns_by_file[f.uri], "compression": f.compression or ""} for f in files]
    return ray.data.from_items(items, override_num_blocks=max(1, len(items))).map_batches(
        _read_file_block,
        batch_size=1,
        batch_format="numpy",
        fn_kwargs={"declared": list(source.column_names), "expected": expected, "policy": policy, "source": name, "run_id": run_id,
                   "ingested_at": ingested_at, "schema": schema},
    )


def _instant(value: str) -> pd.Timestamp:
    try:
        return pd.Timestamp(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise SourceError(f"watermark value {value!r} is not a timestamp: the watermark column must hold "
                          "timestamps or ISO-8601 text") from None


def shift_watermark(value: str, seconds: float) -> str:
    """`value` moved back by `seconds`, written as the database wrote it (a 'T' or a space between date and
    time, a trailing Z or not), so the database compares it like its own values."""
    instant = _instant(value) - pd.Timedelta(seconds=seconds)
    text = instant.strftime("%Y-%m-%d" + ("T" if "T" in value else " ") + "%H:%M:%S")
    if instant.microsecond:
        text += f".{instant.microsecond:06d}"
    return text + ("Z" if value.endswith("Z") else "")


def latest_watermark(values: List[Optional[str]]) -> Optional[str]:
    """The latest of watermark values as text, compared as instants."""
    present = [v for v in values if v]
    return max(present, key=_instant) if present else None


def redact_uri(uri: str) -> str:
    try:
        return sqlalchemy.engine.make_url(uri).render_as_string(hide_password=True)
    except Exception:
        return uri


def probe_query(name: str, source: DatasetConfig) -> None:
    """Fail with one line, before any work, if the database or the query is not there."""
    uri = source.uri or ""
    if uri.startswith("sqlite:///"):
        db_path = uri[len("sqlite:///"):]
        if not Path(db_path).is_file():  # SQLite would silently create an empty database
            raise SourceError(f"source {name!r}: database file {db_path} does not exist")
    engine = sqlalchemy.create_engine(uri)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f"SELECT * FROM ({source.query}) AS probe LIMIT 0")
    except Exception as exc:
        raise _query_failed(name, uri, exc) from None
    finally:
        engine.dispose()


def _query_failed(name: str, uri: str, exc: Exception) -> SourceError:
    return SourceError(f"source {name!r}: query failed on {redact_uri(uri)}: {str(exc).splitlines()[0]}")


def read_query(name: str, source: DatasetConfig, since: Optional[str] = None) -> pa.Table:
    """Rows of a SQL source as text columns; with `since`, only the rows whose watermark column is at or
    after it (the comparison is the database's own). Read here, in the driver, as Ray Data's SQL reader
    would (one cursor, `fetchall`, Arrow's type inference, then text): a query without shard keys is one
    read task there anyway, and its rows came to the driver to be hashed. Reading them here lets a rerun
    find an unchanged source without starting Ray."""
    uri = source.uri or ""
    query = source.query or ""
    if since is not None:
        literal = since.replace("'", "''")
        query = f"SELECT * FROM ({query}) AS source_rows WHERE {source.watermark_column} >= '{literal}'"
    engine = sqlalchemy.create_engine(uri)
    try:
        connection = engine.raw_connection()
        try:
            cursor = connection.cursor()
            cursor.execute(query)
            rows = cursor.fetchall()
            names = [description[0] for description in cursor.description]
        finally:
            connection.close()
    except Exception as exc:
        raise _query_failed(name, uri, exc) from None
    finally:
        engine.dispose()
    values = {column: [row[i] for row in rows] for i, column in enumerate(names)}
    text = {}
    for column in source.column_names:
        try:
            text[column] = _text_of(values[column]) if column in values else pa.nulls(len(rows), pa.string())
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise SourceError(f"source {name!r}: column {column!r} of the query result cannot be read as text: "
                              f"{str(exc).splitlines()[0]}") from None
    return pa.table(text)


def _text_of(values: list) -> pa.ChunkedArray:
    """One result column as text. Arrow infers the column's type from all its values, as Ray's SQL reader
    did; a column holding values of several types (SQLite allows it) is converted one type at a time."""
    try:
        return _as_text(pa.chunked_array([pa.array(values)]))
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    objects = np.empty(len(values), dtype=object)
    objects[:] = values
    kinds = np.array([type(value).__name__ for value in values], dtype=object)
    text = np.full(len(values), None, dtype=object)
    for kind in np.unique(kinds):
        at = kinds == kind
        text[at] = _as_text(pa.chunked_array([pa.array(objects[at].tolist())])).to_numpy(zero_copy_only=False)
    return pa.chunked_array([pa.array(text, pa.string())])
