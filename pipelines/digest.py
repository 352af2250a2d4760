"""Order-independent content digests: the same rows give the same digest however they are split."""

from __future__ import annotations

import hashlib
from typing import Dict

import numpy as np
import pandas as pd
import pyarrow as pa

MASK = (1 << 64) - 1


def partial_digest(batch: pa.Table) -> Dict[str, list]:
    """Row count and sum (mod 2**64) of per-row hashes of one batch."""
    frame = batch.to_pandas()
    hashes = pd.util.hash_pandas_object(frame, index=False).to_numpy(np.uint64)
    total = int(hashes.sum(dtype=np.uint64)) if len(hashes) else 0  # uint64 addition wraps mod 2**64
    return {"rows": [len(frame)], "hash_sum": [str(total)]}


def combine(partials: pd.DataFrame, schema: pa.Schema) -> str:
    """`sha256:<hex>` over the schema, the row count and the summed row hashes."""
    total = sum(int(h) for h in partials["hash_sum"]) & MASK if len(partials) else 0
    rows = int(partials["rows"].sum()) if len(partials) else 0
    shape = ",".join(f"{f.name}:{f.type}" for f in schema)
    return "sha256:" + hashlib.sha256(f"{shape}|{rows}|{total:016x}".encode()).hexdigest()


def table_digest(table: pa.Table) -> str:
    """The same digest computed in one piece (for tests and small tables)."""
    return combine(pd.DataFrame(partial_digest(table)), table.schema)


def dataset_digest(ds, schema: pa.Schema) -> str:
    """The same digest of a Ray dataset's rows (any object with map_batches), taken in `schema`'s column
    order and types, so rows read back from a table compare equal to the rows about to be written."""
    names = schema.names

    def partial(batch: pa.Table) -> Dict[str, list]:
        return partial_digest(batch.select(names).cast(schema))

    return combine(ds.map_batches(partial, batch_format="pyarrow").to_pandas(), schema)
