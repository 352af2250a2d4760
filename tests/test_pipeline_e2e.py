"""End to end on real Ray, Iceberg (SQLite catalog), Feast (SQLite online store) and MLflow (local store)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from pyiceberg.catalog import load_catalog

from features.registry import feature_set
from tests.conftest import BOUNDARY_LINES
from tests.oracle import oracle

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent


def catalog_of(summary):
    return load_catalog(summary["catalog"]["name"], **summary["catalog"]["properties"])


def table_frame(summary, identifier, snapshot_id=None) -> pd.DataFrame:
    return catalog_of(summary).load_table(identifier).scan(snapshot_id=snapshot_id).to_pandas()


def python(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


def test_every_table_is_readable_from_a_separate_process(pipeline_run):
    summary = pipeline_run["summary"]
    script = """
        import json, sys
        from pyiceberg.catalog import load_catalog
        summary = json.loads(sys.argv[1])
        catalog = load_catalog(summary["catalog"]["name"], **summary["catalog"]["properties"])
        print(json.dumps({i: catalog.load_table(i).scan().to_arrow().num_rows for i in summary["tables"]}))
    """
    out = python(script, json.dumps(summary, default=str))
    assert out.returncode == 0, out.stderr
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(counts) == {"bronze.transactions", "silver.transactions", "quarantine.transactions", "bronze.users",
                           "silver.users", "quarantine.users", "gold.user_spend_daily", "gold.merchant_activity"}
    assert counts == {i: t["rows"] for i, t in summary["tables"].items()}


def test_rows_add_up_and_every_planted_dirty_row_is_quarantined_for_its_rule(pipeline_run):
    summary, planted = pipeline_run["summary"], pipeline_run["planted"]
    bronze = table_frame(summary, "bronze.transactions")
    silver = table_frame(summary, "silver.transactions")
    quarantine = table_frame(summary, "quarantine.transactions")
    duplicates = summary["duplicates"]["transactions"]
    assert len(bronze) == len(silver) + len(quarantine) + duplicates
    assert len(bronze) == planted["transactions"] + len(BOUNDARY_LINES)
    kinds = pd.Series([p["kind"] for p in planted["planted"]]).value_counts()
    assert duplicates == kinds["duplicate"]
    assert set(kinds.index) == {"missing_user_id", "non_positive_amount", "bad_ts", "unknown_currency",
                                "unknown_channel", "unknown_user", "duplicate", "malformed_line"}
    rules_by_tx = quarantine.dropna(subset=["tx_id"]).groupby("tx_id")["_failed_rules"].first()
    malformed = set(quarantine.loc[quarantine["_failed_rules"] == "line_well_formed", "_malformed_line"])
    for dirt in planted["planted"]:
        if dirt["kind"] == "duplicate":
            assert (silver["tx_id"] == dirt["tx_id"]).sum() == 1, dirt
            assert dirt["tx_id"] not in rules_by_tx.index
        elif dirt["kind"] == "malformed_line":
            assert dirt["line"] in malformed, dirt
        else:
            assert dirt["rule"] in rules_by_tx[dirt["tx_id"]].split(";"), (dirt, rules_by_tx.get(dirt["tx_id"]))
    # nothing else was rejected: quarantine holds exactly the planted dirt
    planted_bad = sum(1 for p in planted["planted"] if p["kind"] != "duplicate")
    assert len(quarantine) == planted_bad
    # users: one clean full copy
    users = summary["tables"]
    assert users["bronze.users"]["rows"] == users["silver.users"]["rows"] + users["quarantine.users"]["rows"] + \
        summary["duplicates"]["users"]


def test_silver_is_typed_and_exactly_the_clean_rows(pipeline_run):
    summary, planted = pipeline_run["summary"], pipeline_run["planted"]
    silver = table_frame(summary, "silver.transactions")
    dirty = {p["tx_id"] for p in planted["planted"] if p["kind"] != "duplicate"}
    bronze = table_frame(summary, "bronze.transactions")
    expected = set(bronze["tx_id"].dropna()) - dirty
    assert set(silver["tx_id"]) == expected and silver["tx_id"].is_unique
    assert str(silver["ts"].dtype) == "datetime64[us, UTC]"
    assert silver["amount"].map(lambda d: d.as_tuple().exponent).eq(-2).all()


def _silver_events(summary):
    silver = table_frame(summary, "silver.transactions")
    events = silver.to_dict("records")
    for e in events:
        e["ts"] = e["ts"].to_pydatetime()
    users = table_frame(summary, "silver.users")
    entities = {r["user_id"]: {"country": r["country"], "signup_ts": r["signup_ts"].to_pydatetime()}
                for r in users.to_dict("records")}
    days = sorted({e["ts"].date() for e in events})
    return events, entities, days[0] + dt.timedelta(days=1), days[-1] + dt.timedelta(days=1)


def _assert_gold_equals_oracle(summary, name):
    fs = feature_set(name)
    events, entities, first, last = _silver_events(summary)
    expected = oracle(events, fs, first, last, entities)
    gold = table_frame(summary, f"gold.{name}").sort_values([fs.entity.join_key, "as_of"]).reset_index(drop=True)
    expected = expected.sort_values([fs.entity.join_key, "as_of"]).reset_index(drop=True)
    assert len(gold) == len(expected)
    assert gold[fs.entity.join_key].tolist() == expected[fs.entity.join_key].tolist()
    assert gold["as_of"].tolist() == expected["as_of"].tolist()
    for column in fs.feature_names():
        got = gold[column].astype(object).where(gold[column].notna(), None).tolist()
        want = expected[column].astype(object).where(expected[column].notna(), None).tolist()
        assert got == want, column


@pytest.mark.parametrize("name", ["user_spend_daily", "merchant_activity"])
def test_gold_equals_brute_force_oracle(pipeline_run, name):
    _assert_gold_equals_oracle(pipeline_run["summary"], name)


def test_boundary_events_land_in_the_right_windows(pipeline_run):
    gold = table_frame(pipeline_run["summary"], "gold.user_spend_daily")
    row = gold[(gold["user_id"] == 1) & (gold["as_of"] == pd.Timestamp("2026-01-15T00:00Z"))].iloc[0]
    silver = table_frame(pipeline_run["summary"], "silver.transactions")
    mine = silver[silver["user_id"] == 1]
    as_of = pd.Timestamp("2026-01-15T00:00Z")
    in_7d = mine[(mine["ts"] >= as_of - pd.Timedelta(days=7)) & (mine["ts"] < as_of)]
    assert "btx-7d" in set(in_7d["tx_id"]) and "btx-7d-minus-1us" not in set(in_7d["tx_id"])
    assert row["spend_7d"] == float(sum(in_7d["amount"]))
    assert row["tx_count_7d"] == len(in_7d)
    assert row["days_since_last_tx"] == 1  # the 23:59:59.999999 event of the 14th


FEAST_SCRIPT = """
    import json, sys
    import pandas as pd
    from feast import FeatureStore
    repo, user_ids, entity_rows = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
    store = FeatureStore(repo_path=repo)
    refs = [f"user_spend_daily:{f}" for f in ("spend_7d", "spend_30d", "tx_count_90d", "avg_amount_30d",
                                                "days_since_last_tx", "country")]
    online = store.get_online_features(features=refs, entity_rows=[{"user_id": u} for u in user_ids]).to_df()
    entity_df = pd.DataFrame(entity_rows)
    entity_df["event_timestamp"] = pd.to_datetime(entity_df["event_timestamp"], utc=True, format="ISO8601")
    hist = store.get_historical_features(entity_df=entity_df, features=refs).to_df()
    hist["event_timestamp"] = hist["event_timestamp"].astype(str)
    merchant = store.get_online_features(features=["merchant_activity:revenue_30d", "merchant_activity:web_share_30d"],
                                         entity_rows=[{"merchant_id": 1}, {"merchant_id": 2}]).to_df()
    merchant_df = pd.DataFrame({"merchant_id": [1, 2, 3],
                                "event_timestamp": pd.to_datetime(["2026-01-10T09:00Z", "2026-01-15T00:00Z",
                                                                   "2026-01-20T23:59:59Z"], utc=True, format="ISO8601")})
    merchant_hist = store.get_historical_features(
        entity_df=merchant_df, features=store.get_feature_service("merchant_activity_service")).to_df()
    merchant_hist["event_timestamp"] = merchant_hist["event_timestamp"].astype(str)
    print(json.dumps({"online": online.to_dict("records"), "historical": hist.to_dict("records"),
                      "merchant": merchant.to_dict("records"),
                      "merchant_historical": merchant_hist.to_dict("records")}, default=str))
"""


def _none_if_nan(value):
    return None if value is None or (isinstance(value, float) and pd.isna(value)) else value


def test_feast_online_and_historical_from_a_separate_process(pipeline_run):
    summary = pipeline_run["summary"]
    gold = table_frame(summary, "gold.user_spend_daily")
    latest = gold.sort_values(["user_id", "as_of"]).groupby("user_id").tail(1).set_index("user_id")
    users = [int(u) for u in latest.index[:12]]
    # timestamps: midnight, mid-day, 1us before the next midnight, and a day with no gold row (before any data)
    rows = []
    for user in users[:6]:
        days = sorted(gold.loc[gold["user_id"] == user, "as_of"])
        for ts in (days[0], days[len(days) // 2] + pd.Timedelta(hours=13),
                   days[-1] + pd.Timedelta(days=1) - pd.Timedelta(microseconds=1),
                   pd.Timestamp("2025-12-01T10:00Z")):
            rows.append({"user_id": user, "event_timestamp": ts.isoformat()})
    out = python(FEAST_SCRIPT, summary["feast_repo"], json.dumps(users), json.dumps(rows))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    features = ["spend_7d", "spend_30d", "tx_count_90d", "avg_amount_30d", "days_since_last_tx", "country"]
    for record in result["online"]:
        expected = latest.loc[record["user_id"]]
        for f in features:
            assert _none_if_nan(record[f]) == _none_if_nan(expected[f].item() if hasattr(expected[f], "item")
                                                           else expected[f]), (record["user_id"], f)
    by_key = gold.set_index(["user_id", "as_of"])
    assert len(result["historical"]) == len(rows)
    for record in result["historical"]:
        ts = pd.Timestamp(record["event_timestamp"])
        as_of = ts.floor("D")  # ttl is one day: only the row of the as-of day at or before ts is valid
        if (record["user_id"], as_of) in by_key.index:
            expected = by_key.loc[(record["user_id"], as_of)]
            for f in features:
                want = expected[f].item() if hasattr(expected[f], "item") else expected[f]
                assert _none_if_nan(record[f]) == _none_if_nan(want), (record, f)
        else:
            assert all(_none_if_nan(record[f]) is None for f in features), record
    merchants = table_frame(summary, "gold.merchant_activity")
    newest = merchants.sort_values("as_of").groupby("merchant_id").tail(1).set_index("merchant_id")
    for record in result["merchant"]:
        assert record["revenue_30d"] == newest.loc[record["merchant_id"], "revenue_30d"]
    by_merchant = merchants.set_index(["merchant_id", "as_of"])
    assert len(result["merchant_historical"]) == 3
    for record in result["merchant_historical"]:
        expected = by_merchant.loc[(record["merchant_id"], pd.Timestamp(record["event_timestamp"]).floor("D"))]
        for f in ("revenue_7d", "revenue_30d", "web_revenue_30d", "unique_customers_30d", "web_share_30d"):
            assert _none_if_nan(record[f]) == _none_if_nan(expected[f].item()), (record, f)


def test_mlflow_run_names_every_table_snapshot(pipeline_run):
    from mlflow.tracking import MlflowClient

    summary = pipeline_run["summary"]
    client = MlflowClient(tracking_uri=summary["mlflow"]["tracking_uri"])
    run = client.get_run(summary["mlflow"]["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["cutoff"] == "2026-01-21T00:00:00Z"
    assert run.data.params["datasets.transactions.name"] == "transactions"
    assert run.data.metrics["transactions.quarantined"] == summary["quarantined"]["transactions"]
    assert run.data.metrics["transactions.duplicates_dropped"] == summary["duplicates"]["transactions"]
    inputs = run.inputs.dataset_inputs
    catalog = catalog_of(summary)
    named = {}
    for item in inputs:
        source = json.loads(item.dataset.source)
        assert item.dataset.source_type == "iceberg"
        table = catalog.load_table(source["identifier"])
        assert table.snapshot_by_id(source["snapshot_id"]) is not None
        named[(source["identifier"], [t.value for t in item.tags if t.key == "mlflow.data.context"][0])] = \
            source["snapshot_id"]
    written = {i for i, c in named if c == "written"}
    assert written == set(summary["tables"])  # the first run wrote every table
    assert named[("gold.user_spend_daily", "written")] == summary["tables"]["gold.user_spend_daily"]["snapshot_id"]
    # the dataset source rebuilds the exact frame by time travel
    from serving.tracking import IcebergDatasetSource

    source = IcebergDatasetSource.from_dict(json.loads(
        next(i.dataset.source for i in inputs if json.loads(i.dataset.source)["identifier"] == "gold.user_spend_daily")))
    assert source.load().num_rows == summary["tables"]["gold.user_spend_daily"]["rows"]


def test_no_raw_pii_anywhere_past_bronze(pipeline_run):
    import sqlite3

    summary, cfg = pipeline_run["summary"], pipeline_run["cfg"]
    with sqlite3.connect(Path(cfg.sample['output_dir']) / "users.db") as conn:
        users = pd.read_sql("SELECT email, full_name, phone, birth_date FROM users", conn)
    secrets = {v for column in users.columns for v in users[column]}
    assert len(secrets) > 400
    for identifier in [*summary["tables"], "quality.check_results"]:
        if identifier.startswith("bronze."):
            continue  # bronze is the raw copy by definition
        frame = table_frame(summary, identifier).astype(str)
        values = set(frame.to_numpy().ravel())
        assert not values & secrets, identifier
    data_dir = Path(summary["data_dir"])
    blobs = [p for d in ("feast", "mlflow", "logs", "reports", "alerts", "training_index")
             for p in (data_dir / d).rglob("*") if p.is_file()]
    assert any(p.name == "online_store.db" for p in blobs) and any(p.suffix == ".jsonl" for p in blobs)
    assert any(p.name == "cells.arrow" for p in blobs)  # gold's copy for training sets is checked too
    assert any(p.suffix == ".html" and "artifacts" in str(p) for p in blobs)  # the quality report in MLflow
    for path in blobs:
        content = path.read_bytes()
        leaked = [s for s in secrets if s.encode() in content]
        assert not leaked, (path, leaked[:3])
    # the online store really holds tokens-free values: it holds features only
    silver_users = table_frame(summary, "silver.users")
    assert silver_users["email"].str.fullmatch(r"[0-9a-f]{64}").all()


def test_gold_content_digest_streamed_on_the_driver_equals_the_digest_through_ray(pipeline_run):
    """The run's gold digests (read back batch by batch in the driver) equal the same digest taken over a
    Ray read of each table, split into blocks by data file."""
    from pipelines import digest
    from pipelines.io.lake import Lake

    lake = Lake(pipeline_run["cfg"].catalog)
    for identifier, recorded in pipeline_run["summary"]["gold_digests"].items():
        schema = lake.table(identifier).schema().as_arrow()
        assert digest.dataset_digest(lake.read_ray(identifier), schema) == recorded
