"""The standard sample data set: users in SQLite, daily transaction files in CSV and Parquet, ~1% dirt.

Deterministic: the same seed and sizes give byte-identical files. Besides the data it writes
`planted_dirt.json`, the ground truth of every dirty row it planted (tx_id or raw line, and the rule that
must catch it), so tests can check that each one lands in quarantine for the right reason.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sqlalchemy
from pathlib import Path
from typing import Dict, List

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dataclasses import dataclass, fields
from typing import Any, Mapping, Union

COUNTRIES = ["DE", "FR", "GB", "SE", "CH", "NL", "ES", "IT", "US", "PL"]
CURRENCIES = ["EUR", "EUR", "EUR", "USD", "GBP", "CHF", "SEK"]
CHANNELS = ["web", "app", "store"]
FIRST = ["Anna", "Ben", "Clara", "David", "Eva", "Felix", "Greta", "Hugo", "Ida", "Jonas", "Karin", "Lars"]
LAST = ["Berg", "Costa", "Dubois", "Engel", "Fischer", "Garcia", "Hansen", "Ivanov", "Jansen", "Klein"]
DIRT_KINDS = ["missing_user_id", "non_positive_amount", "bad_ts", "unknown_currency", "unknown_channel",
              "unknown_user", "duplicate", "malformed_line"]
EXPECTED_RULE = {"missing_user_id": "user_id_present", "non_positive_amount": "amount_in_range",
                 "bad_ts": "ts_parseable", "unknown_currency": "currency_known", "unknown_channel": "channel_known",
                 "unknown_user": "user_id_known", "duplicate": "duplicate", "malformed_line": "line_well_formed"}


@dataclass(frozen=True)
class SampleConfig:
    """The sample project's `sample:` settings (examples/sample/conf/project.yaml)."""

    output_dir: str
    seed: int = 7
    n_users: int = 2000
    n_transactions: int = 200_000
    days: int = 120
    start_date: str = "2026-01-01"
    n_merchants: int = 300
    dirt_fraction: float = 0.01
    parquet_every: int = 2  # every n-th day is written as Parquet, the others as CSV

    @staticmethod
    def of(settings: Union["SampleConfig", Mapping[str, Any]]) -> "SampleConfig":
        if isinstance(settings, SampleConfig):
            return settings
        known = {f.name: f.type for f in fields(SampleConfig)}
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise ValueError(f"sample settings: unknown key(s) {unknown} (known: {sorted(known)})")
        types = {"int": int, "float": float, "str": str}
        return SampleConfig(**{k: types[str(known[k])](v) for k, v in settings.items()})


def users_frame(cfg: SampleConfig, rng: np.random.Generator) -> pd.DataFrame:
    n = cfg.n_users
    ids = np.arange(1, n + 1)
    first = rng.choice(FIRST, n)
    last = rng.choice(LAST, n)
    start = dt.datetime.fromisoformat(cfg.start_date).replace(tzinfo=dt.timezone.utc)
    signup = [start - dt.timedelta(days=int(d), seconds=int(s))
              for d, s in zip(rng.integers(1, 1500, n), rng.integers(0, 86400, n))]
    birth = [dt.date(1950, 1, 1) + dt.timedelta(days=int(d)) for d in rng.integers(0, 18000, n)]
    return pd.DataFrame({
        "user_id": ids,
        "email": [f"{f.lower()}.{l.lower()}{i}@example.org" for f, l, i in zip(first, last, ids)],
        "full_name": [f"{f} {l}" for f, l in zip(first, last)],
        "phone": [f"+49 151 {i:07d}" for i in (ids * 7919) % 10_000_000],
        "birth_date": [b.isoformat() for b in birth],
        "country": rng.choice(COUNTRIES, n),
        "signup_ts": [s.strftime("%Y-%m-%dT%H:%M:%SZ") for s in signup],
    })


def transactions_frame(cfg: SampleConfig, rng: np.random.Generator) -> pd.DataFrame:
    n = cfg.n_transactions
    start = np.datetime64(cfg.start_date, "us")
    offsets = rng.integers(0, cfg.days * 86_400_000_000, n)
    ts = np.sort(start + offsets.astype("timedelta64[us]"))
    cents = np.maximum(1, np.round(rng.lognormal(3.2, 1.0, n) * 100)).astype(np.int64)
    return pd.DataFrame({
        "tx_id": [f"tx{i:09d}" for i in range(n)],
        "user_id": rng.integers(1, cfg.n_users + 1, n).astype(object),
        "merchant_id": rng.integers(1, cfg.n_merchants + 1, n),
        "amount": [f"{c // 100}.{c % 100:02d}" for c in cents],
        "currency": rng.choice(CURRENCIES, n),
        "channel": rng.choice(CHANNELS, n),
        "ts": pd.to_datetime(ts).tz_localize("UTC"),
    })


def is_parquet_day(index: int, cfg: SampleConfig) -> bool:
    return cfg.parquet_every > 0 and index % cfg.parquet_every == cfg.parquet_every - 1


def plant_dirt(tx: pd.DataFrame, cfg: SampleConfig, rng: np.random.Generator) -> tuple[pd.DataFrame, List[Dict]]:
    """Corrupt about `dirt_fraction` of the rows, each with one kind of dirt; return what was planted.
    Dirt that only text can carry (an unparseable timestamp, a malformed line) goes to CSV days only."""
    n_dirty = int(len(tx) * cfg.dirt_fraction)
    picked = np.sort(rng.choice(len(tx), size=n_dirty, replace=False))
    kinds = [DIRT_KINDS[i % len(DIRT_KINDS)] for i in range(n_dirty)]
    day_index = pd.Series(day_numbers(tx["ts"], cfg))
    tx = tx.copy()
    tx["dirt"] = None
    planted = []
    duplicates = []
    for row, kind in zip(picked, kinds):
        if kind in ("bad_ts", "malformed_line") and is_parquet_day(int(day_index.iat[row]), cfg):
            kind = "unknown_currency"
        tx.at[row, "dirt"] = kind
        if kind == "missing_user_id":
            tx.at[row, "user_id"] = None
        elif kind == "non_positive_amount":
            tx.at[row, "amount"] = "0.00" if row % 2 else f"-{tx.at[row, 'amount']}"
        elif kind == "unknown_currency":
            tx.at[row, "currency"] = "XXX"
        elif kind == "unknown_channel":
            tx.at[row, "channel"] = "fax"
        elif kind == "unknown_user":
            tx.at[row, "user_id"] = cfg.n_users + 1000 + int(row)
        elif kind == "duplicate":
            duplicates.append(row)
        planted.append({"tx_id": tx.at[row, "tx_id"], "kind": kind, "rule": EXPECTED_RULE[kind]})
    if duplicates:  # an exact copy, delivered in the same daily file
        tx = pd.concat([tx, tx.loc[duplicates].assign(dirt="duplicate_copy")], ignore_index=True)
        tx = tx.sort_values(["ts", "tx_id"], kind="mergesort").reset_index(drop=True)
    return tx, planted


def _csv_lines(day: pd.DataFrame, planted_by_tx: Dict[str, Dict]) -> List[str]:
    user = day["user_id"].map(lambda u: "" if u is None or pd.isna(u) else str(int(u)))
    ts = day["ts"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ").where(day["dirt"] != "bad_ts", "not-a-timestamp")
    head = day["tx_id"] + "," + user + "," + day["merchant_id"].astype(str) + "," + day["amount"]
    full = head + "," + day["currency"] + "," + day["channel"] + "," + ts
    malformed = (day["dirt"] == "malformed_line").to_numpy()
    lines = np.where(malformed, head, full)  # a truncated line: too few fields
    for tx_id, line in zip(day["tx_id"].to_numpy()[malformed], lines[malformed]):
        planted_by_tx[tx_id]["line"] = line
    return ["tx_id,user_id,merchant_id,amount,currency,channel,ts"] + list(lines)


def day_numbers(ts: pd.Series, cfg: SampleConfig) -> np.ndarray:
    """Index of each row's UTC day from the start date (vectorised: no date objects per row)."""
    days = ts.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy().astype("datetime64[D]")
    return (days - np.datetime64(cfg.start_date, "D")).astype(np.int64)


def _parquet_table(day: pd.DataFrame) -> pa.Table:
    # user_id holds ints and None (object dtype): Int64 keeps the nulls; amounts are exact decimal text
    users = day["user_id"].astype("Int64")
    return pa.table({
        "tx_id": pa.array(day["tx_id"], pa.string()),
        "user_id": pa.array(users, pa.int64()),
        "merchant_id": pa.array(day["merchant_id"], pa.int64()),
        "amount": pa.array(day["amount"], pa.string()).cast(pa.decimal128(18, 2)),
        "currency": pa.array(day["currency"], pa.string()),
        "channel": pa.array(day["channel"], pa.string()),
        "ts": pa.array(day["ts"], pa.timestamp("us", tz="UTC")),
    })


def generate(settings: Union[SampleConfig, Mapping[str, Any]], days: List[int] | None = None) -> Dict[str, object]:
    """Write the data set under output_dir (replacing it); `days` limits which day files are written."""
    cfg = SampleConfig.of(settings)
    out = Path(cfg.output_dir)
    if out.exists() and days is None:
        shutil.rmtree(out)
    (out / "transactions").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    users = users_frame(cfg, rng)
    tx, planted = plant_dirt(transactions_frame(cfg, rng), cfg, rng)
    planted_by_tx = {p["tx_id"]: p for p in planted}
    db = out / "users.db"
    if db.exists():
        db.unlink()
    # through SQLAlchemy: pandas on a raw sqlite3 connection re-registers sqlite3's process-wide datetime
    # adapters, which Feast's SQLite online store relies on (see serving.publish)
    engine = sqlalchemy.create_engine(f"sqlite:///{db}")
    try:
        users.to_sql("users", engine, index=False)
    finally:
        engine.dispose()
    start = dt.date.fromisoformat(cfg.start_date)
    tx_day = day_numbers(tx["ts"], cfg)  # integers: comparing them per day is cheap at 10M+ rows
    written = []
    for index in range(cfg.days):
        if days is not None and index not in days:
            continue
        day = start + dt.timedelta(days=index)
        rows = tx.loc[tx_day == index]
        if is_parquet_day(index, cfg):
            path = out / "transactions" / f"{day.isoformat()}.parquet"
            pq.write_table(_parquet_table(rows), path, compression="zstd")
        else:
            path = out / "transactions" / f"{day.isoformat()}.csv"
            path.write_text("\n".join(_csv_lines(rows, planted_by_tx)) + "\n")
        written.append(path.name)
    summary = {"users": len(users), "transactions": int(len(tx)), "files": written, "planted": planted}
    (out / "planted_dirt.json").write_text(json.dumps(summary, indent=1))
    return summary
