"""Contract of a bronze table: the raw text as received plus the ingest metadata that makes it traceable.

Bronze does not judge values (that is silver's contract); it promises lineage: every row names its
source, file, content hash, run and arrival time, and carries a 16-hex-digit row hash.
"""

from __future__ import annotations

import pandera.pandas as pa


def _matches(pattern: str, name: str) -> pa.Check:
    return pa.Check(lambda s: s.astype("string").str.fullmatch(pattern).fillna(False).astype(bool), name=name)


def contract(columns: list[str]) -> pa.DataFrameSchema:
    def present(name: str) -> pa.Column:
        return pa.Column(nullable=False, checks=pa.Check(lambda s: s.astype("string").str.len() > 0,
                                                         name=f"{name.lstrip('_')}_present"))

    return pa.DataFrameSchema(
        {
            **{c: pa.Column(nullable=True) for c in columns},
            "_malformed_line": pa.Column(nullable=True),
            "_source": present("_source"),
            "_source_file": present("_source_file"),
            "_source_file_sha256": pa.Column(nullable=False, checks=_matches(r"[0-9a-f]{64}", "source_file_sha256_hex")),
            "_ingested_at": pa.Column(nullable=False),
            "_run_id": present("_run_id"),
            "_row_hash": pa.Column(nullable=False, checks=_matches(r"[0-9a-f]{16}", "row_hash_hex")),
        },
        checks=[pa.Check(lambda d: d["_malformed_line"].isna() | d[columns].isna().all(axis=1),
                         name="malformed_line_has_no_fields")],
        strict=False,  # columns bronze evolved to hold (schema_policy.bronze=evolve) are welcome
    )
