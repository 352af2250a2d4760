"""The files a source held that did not go into bronze, and why: `quality.files_not_ingested`.

Every file under a source's location is accounted for in every run: ingested, already ingested (bronze's
commit records), or not ingested, with its outcome:
  rejected  the file cannot be read as declared (unsupported type or compression, not UTF-8, no header,
            a corrupt Parquet footer, ...): the run's status says so and its exit code is distinct
  empty     a header and no rows: nothing to ingest, nothing wrong
A file is judged once per content: the same path with the same sha256 is not judged again (it is counted as
`previously_rejected` or `previously_empty`); a corrected file has another hash and is judged afresh. The
landing directory is left as the producer wrote it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Dict, List, Tuple

import pyarrow as pa
from pyiceberg.expressions import EqualTo

from pipelines.io.lake import Lake, TableSpec

LEDGER = TableSpec("quality.files_not_ingested", pa.schema([
    pa.field("source", pa.string()),
    pa.field("uri", pa.string()),
    pa.field("sha256", pa.string()),
    pa.field("outcome", pa.string()),  # rejected | empty
    pa.field("reason", pa.string()),
    pa.field("run_id", pa.string()),
    pa.field("recorded_at", pa.timestamp("us", tz="UTC")),
]))
REJECTED, EMPTY = "rejected", "empty"


@dataclass(frozen=True)
class NotIngested:
    source: str
    uri: str
    sha256: str
    outcome: str
    reason: str


def judged(lake: Lake, source: str) -> Dict[Tuple[str, str], str]:
    """(uri, sha256) -> outcome of the files of `source` judged before."""
    if not lake.exists(LEDGER.identifier):
        return {}
    rows = lake.read_arrow(LEDGER.identifier, EqualTo("source", source), ["uri", "sha256", "outcome"]).to_pylist()
    return {(r["uri"], r["sha256"]): r["outcome"] for r in rows}


def record(lake: Lake, files: List[NotIngested], run_id: str, properties: Dict[str, str]) -> None:
    """Append the files not judged before (a resumed run does not record a file twice)."""
    seen = {key for source in {f.source for f in files} for key in judged(lake, source)}
    new = [f for f in files if (f.uri, f.sha256) not in seen]
    if not new:
        return
    now = dt.datetime.now(dt.timezone.utc)
    rows = pa.Table.from_pylist([{**f.__dict__, "run_id": run_id, "recorded_at": now} for f in new],
                                schema=LEDGER.schema)
    lake.commit_arrow(rows, LEDGER, properties)
