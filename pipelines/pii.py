"""PII tokenization: a keyed HMAC-SHA256 of each value, stable across runs so joins on tokens work.

The key comes from the environment variable named by `pii_key_env`. The local profile generates one
once under the data directory (with a warning); the prod profile refuses to start without it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Mapping

import pandas as pd
import pyarrow as pa

from pipelines.errors import ConfigError


def load_key(env_name: str, profile: str, data_dir: Path, warn) -> bytes:
    value = os.environ.get(env_name)
    if value:
        return value.encode()
    if profile != "local":
        raise ConfigError(f"environment variable {env_name} (the PII tokenization key) is not set")
    key_file = data_dir / "secrets" / "pii.key"
    if not key_file.exists():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.write_text(secrets.token_hex(32))
        key_file.chmod(0o600)
        warn("generated a local PII key; set the environment variable in production", key_env=env_name,
             key_file=str(key_file))
    return key_file.read_text().strip().encode()


def tokenize(values: pd.Series, key: bytes) -> pd.Series:
    """HMAC-SHA256 hex token of each non-null value; nulls stay null."""

    def token(value: object) -> object:
        if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NA:
            return None
        return hmac.new(key, str(value).encode(), hashlib.sha256).hexdigest()

    return values.astype(object).map(token)


def protect(table: pa.Table, methods: Mapping[str, str], key: bytes) -> pa.Table:
    """The declared PII columns of `table` protected: `hmac` -> token, `drop` -> null (type kept)."""
    for column, method in methods.items():
        if column not in table.column_names:
            continue
        index = table.schema.get_field_index(column)
        if method == "drop":
            table = table.set_column(index, table.schema.field(index), pa.nulls(table.num_rows, table.schema.field(index).type))
        else:
            text = table.column(column).cast(pa.string()).to_pandas()
            tokens = pa.array(tokenize(text, key).to_numpy(), pa.string(), from_pandas=True)
            table = table.set_column(index, pa.field(column, pa.string()), tokens)
    return table
