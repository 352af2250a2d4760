"""Contract of silver.users: typed, validated, PII tokenized; the latest version of each user."""

from __future__ import annotations

from typing import Tuple

import pandas as pd
import pandera.pandas as pa
import pyarrow

from validation.rules import failed_rules

RULES: Tuple[str, ...] = ("user_id_parseable", "country_valid", "signup_ts_parseable")

COLUMN_KINDS = {"user_id": "numeric", "country": "string", "signup_ts": "timestamp"}

SILVER_SCHEMA = pyarrow.schema(
    [
        pyarrow.field("user_id", pyarrow.int64(), nullable=False),
        pyarrow.field("email", pyarrow.string()),  # HMAC token
        pyarrow.field("full_name", pyarrow.string()),  # HMAC token
        pyarrow.field("phone", pyarrow.string()),  # HMAC token
        pyarrow.field("birth_date", pyarrow.string()),  # HMAC token
        pyarrow.field("country", pyarrow.string()),
        pyarrow.field("signup_ts", pyarrow.timestamp("us", tz="UTC")),
        pyarrow.field("_row_hash", pyarrow.string()),
        pyarrow.field("_run_id", pyarrow.string()),
    ]
)


def parse(raw: pd.DataFrame) -> pd.DataFrame:
    ok = raw["user_id"].astype("string").str.fullmatch(r"\d{1,18}").fillna(False).astype(bool)
    return pd.DataFrame(
        {
            "user_id": pd.to_numeric(raw["user_id"].where(ok), errors="coerce").astype("Int64"),
            "country": raw["country"],
            "signup_ts": pd.to_datetime(raw["signup_ts"], utc=True, errors="coerce", format="ISO8601"),
        },
        index=raw.index,
    )


def contract() -> pa.DataFrameSchema:
    return pa.DataFrameSchema(
        {
            "user_id": pa.Column(nullable=True, checks=pa.Check(lambda s: s.notna(), name="user_id_parseable", ignore_na=False)),
            "country": pa.Column(
                nullable=True,
                checks=pa.Check(
                    lambda s: s.astype("string").str.fullmatch(r"[A-Z]{2}").fillna(False).astype(bool),
                    name="country_valid",
                    ignore_na=False,
                ),
            ),
            "signup_ts": pa.Column(
                nullable=True, checks=pa.Check(lambda s: s.notna(), name="signup_ts_parseable", ignore_na=False)
            ),
        }
    )


def check_users(raw: pd.DataFrame) -> Tuple[pd.DataFrame, pd.Series]:
    raw = raw.reset_index(drop=True)
    typed = parse(raw)
    return typed, failed_rules(contract(), typed, RULES)
