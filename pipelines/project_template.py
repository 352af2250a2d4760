"""`medallion init DIR`: a minimal project to start from - two datasets (orders, an events dataset read from
daily CSV files, and customers, a state dataset joined as attributes), one feature set, and a week of
example rows, so that `medallion run --project DIR` works at once and each file shows what to change."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Dict

from pipelines.errors import ConfigError

PROJECT_YAML = """\
# This project's settings: any key of `medallion config --project .` may be set here (or per run on the
# command line, which wins).

# Where the local profile keeps the lake, the feature store, MLflow and the logs.
data_dir: ${oc.env:PIPELINE_DATA_DIR,${project}/data}
#
# The run's logical end (exclusive): events at or after it are quarantined. In production pass it per run
# (cutoff=...); a local run without one uses the end of the current UTC day.
cutoff: "2026-01-08T00:00:00Z"   # the example rows end on 2026-01-07
"""

ORDERS_YAML = """\
# One dataset: where it comes from, its columns and rules, its key and its event time.
# Quarantine records each failed rule by name: <column>_present, _parseable, _known, _in_range, ...
description: Orders placed in the shop, one row per order
kind: files
path: ${project}/landing/orders     # a directory (or s3://... prefix) of .csv / .parquet files
formats: [csv]
null_tokens: ["NA", ""]                  # text meaning "no value"
columns:                                 # in the files' order
  order_id: {type: string, required: true}
  customer_id: {type: integer, required: true, references: customers.customer_id}
  amount: {type: "decimal(12,2)", required: true, range: {min: 0, min_exclusive: true}}
  channel: {type: string, allowed: [web, app]}
  ordered_at: {type: timestamp, required: true, not_before: 2020-01-01, not_after_cutoff: true}
key: order_id                            # or a list: [shop, order_id]
event_time: ordered_at                   # silver is partitioned by its UTC day; features window over it
quality:
  ranges:
    amount: {min: 1, max: 500, max_outside_fraction: 0.05, severity: warn}
"""

CUSTOMERS_YAML = """\
# A state dataset (no event time): silver holds the newest row of each customer.
description: Customers of the shop
kind: files
path: ${project}/landing/customers
formats: [csv]
null_tokens: ["NA", ""]
columns:
  customer_id: {type: integer, required: true}
  email: {}
  country: {type: string, pattern: "[A-Z]{2}"}
  signed_up_at: {type: timestamp, required: true}
key: customer_id
pii: {email: hmac}                       # tokenized in silver (HMAC key from $PIPELINE_PII_KEY)
quality:
  completeness: {email: 0.5}             # the gate's default wants 95% of every column filled
"""

FEATURES_PY = '''\
"""Daily order features per customer: one row per customer per as-of day (midnight UTC)."""

from features.declarations import Attribute, Entity, FeatureSet, WindowAggregation

customer = Entity(name="customer", join_key="customer_id", dtype="int64", description="A customer of the shop")

FEATURE_SET = FeatureSet(
    name="customer_orders_daily",
    entity=customer,
    source_table="orders",
    timestamp_column="ordered_at",
    entity_table="customers",
    description="Orders of a customer over trailing windows.",
    aggregations=(
        WindowAggregation("order_amount", "amount", "sum", ("1d", "7d"), "float64", "Sum of order amounts"),
        WindowAggregation("orders", None, "count", ("7d",), "int64", "Number of valid orders"),
    ),
    attributes=(
        Attribute("tenure_days", "signed_up_at", "int64", "Days since signing up", transform="days_until_as_of"),
        Attribute("country", "country", "string", "Country (ISO-3166 alpha-2)"),
    ),
)
'''


def _example_rows() -> Dict[str, str]:
    """A week of orders (one file a day) with a few rows that quarantine shows, and the customers."""
    files = {"landing/customers/customers.csv":
             "customer_id,email,country,signed_up_at\n"
             "1,ada@example.org,GB,2025-06-01T09:00:00Z\n"
             "2,NA,FR,2025-09-15T12:30:00Z\n"
             "3,lin@example.org,SE,2025-12-24T18:00:00Z\n"}
    first = dt.date(2026, 1, 1)
    for offset in range(7):
        day = first + dt.timedelta(days=offset)
        lines = ["order_id,customer_id,amount,channel,ordered_at"]
        for n, customer in enumerate((1, 2, 3)):
            lines.append(f"o-{day:%m%d}-{n},{customer},{10 + offset * 3 + n}.50,{'web' if n % 2 else 'app'},"
                         f"{day}T{9 + n:02d}:15:00Z")
        if offset == 3:  # what quarantine is for: a missing customer, an unknown one, a negative amount
            lines += [f"o-{day:%m%d}-x,NA,12.00,web,{day}T20:00:00Z",
                      f"o-{day:%m%d}-y,99,12.00,web,{day}T20:05:00Z",
                      f"o-{day:%m%d}-z,1,-5.00,app,{day}T20:10:00Z"]
        files[f"landing/orders/{day}.csv"] = "\n".join(lines) + "\n"
    return files


def write_project(directory: str | Path) -> Path:
    """Write the project; refuses to overwrite a directory that already holds a project."""
    root = Path(directory).expanduser().resolve()
    if (root / "conf").exists() or (root / "features").exists():
        raise ConfigError(f"config error: {root} already holds a project (conf/ or features/): nothing written")
    files = {"conf/project.yaml": PROJECT_YAML, "conf/dataset/orders.yaml": ORDERS_YAML,
             "conf/dataset/customers.yaml": CUSTOMERS_YAML, "features/customer_orders_daily.py": FEATURES_PY,
             **_example_rows()}
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root
