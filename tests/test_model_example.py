"""The model example (examples/train_model.py) end to end on the session's pipeline run: labels from silver
by their definition, a training set in a child MLflow run linked to the model run, the model in MLflow
loaded back predicting exactly as in process, and online scoring over the online store's values.

Reads the `pipeline_run` tables only (checked: no table gets a new snapshot); writes MLflow runs."""

from __future__ import annotations

import datetime as dt
import json
import statistics
from collections import defaultdict
from decimal import Decimal
from typing import Dict, List

import numpy as np
import pandas as pd
import pytest

from tests.conftest import SMALL

pytestmark = pytest.mark.e2e

SET = "user_spend_daily"
UNKNOWN = 10**9  # a user the store has never seen


def _snapshots(cfg) -> Dict[str, int]:
    from pipelines.io.lake import Lake

    lake = Lake(cfg.catalog)
    return {f"{ns[0]}.{name}": lake.table(f"{ns[0]}.{name}").current_snapshot().snapshot_id
            for ns in lake.catalog.list_namespaces() for _, name in lake.catalog.list_tables(ns)
            if lake.table(f"{ns[0]}.{name}").current_snapshot() is not None}


@pytest.fixture(scope="module")
def trained(pipeline_run):
    from examples import train_model
    from pipelines.io.lake import Lake
    from serving.training_set import resolve_sets

    cfg = pipeline_run["cfg"]
    before = _snapshots(cfg)
    silver = Lake(cfg.catalog).read_arrow("silver.transactions", columns=["user_id", "amount", "ts"]).to_pylist()
    known = sorted({r["user_id"] for r in silver})
    users = [known[0], known[1], known[len(known) // 2], UNKNOWN, known[-1]]
    outcome = train_model.run(cfg, users=users)
    return dict(cfg=cfg, outcome=outcome, users=users, silver=silver, spec=resolve_sets(cfg, [SET])[0],
                before=before)


def test_labels_follow_their_definition_and_features_only_see_the_past(trained):
    """Each label from the silver rows by the definition (a loop, in Decimal); each label's 7-day spend
    feature from the rows before its time: no event of the label's week reaches the features."""
    outcome = trained["outcome"]
    by_user = defaultdict(list)
    for row in trained["silver"]:
        by_user[row["user_id"]].append(row)
    frame = outcome.training.to_pandas()
    assert len(frame) == len(outcome.labels.frame) > 0
    assert frame.columns.tolist()[:4] == ["user_id", "ts", "future_spend", "label"]
    assert frame.columns.tolist()[4:] == outcome.features == trained["spec"].feature_names
    spends = []
    for user, t, future, label, spend_7d in zip(frame.user_id, frame.ts, frame.future_spend, frame.label,
                                                frame.spend_7d):
        t = t.to_pydatetime()
        rows = by_user[user]
        assert min(r["ts"] for r in rows) < t  # only users already seen are labelled
        ahead = sum((r["amount"] for r in rows if t <= r["ts"] < t + dt.timedelta(days=7)), Decimal(0))
        behind = sum((r["amount"] for r in rows if t - dt.timedelta(days=7) <= r["ts"] < t), Decimal(0))
        assert Decimal(str(future)) == ahead, (user, t)
        assert label == int(ahead > Decimal(str(outcome.labels.threshold))), (user, t)
        assert Decimal(str(spend_7d)).quantize(Decimal("0.01")) == behind, (user, t)
        spends.append(ahead)
    # X defaults to the median future spend, to the cent below
    assert outcome.labels.threshold == int(statistics.median(int(a * 100) for a in spends)) / 100
    assert 0 < frame.label.sum() < len(frame)  # both classes
    times = sorted(frame.ts.unique())
    assert len(times) >= 2 and all(t.hour == 0 and t.minute == 0 for t in times)
    assert max(times) + pd.Timedelta(days=7) <= pd.Timestamp(trained["cfg"].cutoff_ts)


def test_model_run_is_linked_to_its_training_set_run_and_gold_snapshots(trained):
    import mlflow
    from mlflow.tracking import MlflowClient

    from pipelines.io.lake import Lake
    from serving.training_set import training_set_from_run
    from serving.tracking import IcebergDatasetSource

    cfg, outcome = trained["cfg"], trained["outcome"]
    client = MlflowClient(cfg.tracking.tracking_uri)
    run = client.get_run(outcome.model_run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "train-model"
    assert client.get_experiment(run.info.experiment_id).name == cfg.tracking.experiment
    # linked to the training-set run, its nested child, which holds the training set and rebuilds it
    assert run.data.tags["training_set_run_id"] == outcome.training_set_run_id != outcome.model_run_id
    child = client.get_run(outcome.training_set_run_id)
    assert child.info.status == "FINISHED"
    assert child.data.tags["mlflow.parentRunId"] == outcome.model_run_id
    assert child.data.params["training_set.feature_sets"] == SET
    assert training_set_from_run(cfg, outcome.training_set_run_id).equals(outcome.training)

    # the gold snapshots the rows were read from are the model run's dataset inputs, and are gold's current
    lake = Lake(cfg.catalog)
    current = lake.table(f"gold.{SET}").current_snapshot().snapshot_id
    assert outcome.gold_snapshots == {SET: [current]}
    inputs = defaultdict(list)
    for item in run.inputs.dataset_inputs:
        source = IcebergDatasetSource.from_dict(json.loads(item.dataset.source))
        context = [t.value for t in item.tags if t.key == "mlflow.data.context"]
        inputs[context[0]].append((source.identifier, source.snapshot_id))
    assert inputs["training"] == [(f"gold.{SET}", current)]
    assert inputs["labels"] == [("silver.transactions", lake.table("silver.transactions").current_snapshot().snapshot_id)]
    child_inputs = [json.loads(i.dataset.source)["uri"] for i in child.inputs.dataset_inputs]
    assert child_inputs == [f"iceberg://{lake.name}/gold.{SET}?snapshot_id={current}"]

    # the model: logged from this run, with its artifact
    assert [o.model_id for o in run.outputs.model_outputs] == [outcome.model_id]
    mlflow.set_tracking_uri(cfg.tracking.tracking_uri)
    logged = mlflow.get_logged_model(outcome.model_id)
    assert logged.source_run_id == outcome.model_run_id and logged.name == "model"
    files = {f.path for f in mlflow.artifacts.list_artifacts(outcome.model_uri)}
    assert {"MLmodel", "model.skops"} <= files
    assert run.data.params["label.threshold"] == str(outcome.labels.threshold)
    assert run.data.metrics["valid_rows"] > 0 and "valid_roc_auc" in run.data.metrics


def test_the_model_loaded_back_predicts_exactly_as_in_process(trained):
    import mlflow
    import mlflow.pyfunc
    import mlflow.sklearn

    from examples.train_model import design_matrix, trusted_model_loading

    cfg, outcome, spec = trained["cfg"], trained["outcome"], trained["spec"]
    x = design_matrix(outcome.training.to_pandas(), spec)
    expected = outcome.model.predict_proba(x)
    mlflow.set_tracking_uri(cfg.tracking.tracking_uri)
    with trusted_model_loading():
        by_id = mlflow.sklearn.load_model(outcome.model_uri)
        by_run = mlflow.sklearn.load_model(f"runs:/{outcome.model_run_id}/model")
        served = mlflow.pyfunc.load_model(outcome.model_uri)
    assert np.array_equal(by_id.predict_proba(x), expected)
    assert np.array_equal(by_run.predict_proba(x), expected)
    assert np.array_equal(np.asarray(served.predict(x)), expected)
    assert np.array_equal(outcome.loaded.predict_proba(x), expected)


def _same(a, b) -> bool:
    return (pd.isna(a) and pd.isna(b)) or a == b


def test_online_scores_one_per_entity_from_the_online_store_values(trained):
    from examples.train_model import design_matrix, score_online
    from features.registry import feature_sets
    from serving.publish import online_values, open_store

    cfg, outcome, spec, users = trained["cfg"], trained["outcome"], trained["spec"], trained["users"]
    online = outcome.online
    assert online["user_id"].tolist() == users and len(online) == len(users)
    assert online["score"].between(0, 1).all()
    status = online[f"{outcome.features[0]}__status"].tolist()
    assert status == ["NOT_FOUND" if u == UNKNOWN else "PRESENT" for u in users]  # measured at the cutoff
    assert outcome.score_at == pd.Timestamp(cfg.cutoff_ts)

    # the features scored are the online store's values for those entities
    fs = next(s for s in feature_sets([SET], cfg.project))
    store = open_store(cfg)
    raw = online_values(store, fs, users)
    for name in outcome.features:
        for i, user in enumerate(users):
            assert _same(online[name].iloc[i], raw[name].iloc[i]), (name, user)
            assert online[f"{name}__status"].iloc[i] == status[i]
    # and each score is the model's on exactly those features
    assert np.array_equal(online["score"].to_numpy(), outcome.model.predict_proba(design_matrix(online, spec))[:, 1])
    assert [s["score"] for s in outcome.summary()["scores"]] == online["score"].tolist()
    json.dumps(outcome.summary())

    # stale rows (older than the ttl at the instant scored) count as no data, as lapsed rows do in training
    later = score_online(store, outcome.loaded, spec, users, now=pd.Timestamp(cfg.cutoff_ts) + pd.Timedelta(days=2))
    assert later[f"{outcome.features[0]}__status"].tolist() == ["NOT_FOUND" if u == UNKNOWN else "STALE" for u in users]
    assert later[outcome.features].isna().all().all()
    assert np.allclose(later["score"], online["score"][users.index(UNKNOWN)], rtol=0, atol=0)
    # a wider max_age serves them again
    wide = score_online(store, outcome.loaded, spec, users, now=pd.Timestamp(cfg.cutoff_ts) + pd.Timedelta(days=2),
                        max_age=dt.timedelta(days=3))
    assert np.array_equal(wide["score"].to_numpy(), online["score"].to_numpy())


def test_the_command_line_runs_the_same_loop(trained, pipeline_run):
    import mlflow

    from examples.train_model import main

    cfg, outcome, users = trained["cfg"], trained["outcome"], trained["users"]
    known: List[int] = users[:2]
    summary = main([f"data_dir={pipeline_run['data_dir']}", *SMALL, "--users", ",".join(map(str, known))])
    json.dumps(summary)
    assert summary["model_run_id"] not in (outcome.model_run_id, None)
    assert summary["gold_snapshots"] == {SET: outcome.gold_snapshots[SET]}
    assert summary["labels"]["rows"] == len(outcome.labels.frame)
    assert summary["labels"]["threshold"] == outcome.labels.threshold
    # same labels, same snapshot: the same training set, bit for bit (its digest in each MLflow run) ...
    client = mlflow.MlflowClient(cfg.tracking.tracking_uri)
    digests = [client.get_run(run).data.params["training_set.output_sha256"]
               for run in (summary["training_set_run_id"], outcome.training_set_run_id)]
    assert digests[0] == digests[1]
    # ... and the same fit, to BLAS's rounding: OpenBLAS's sums may take another order from one
    # process's memory layout to another's (seen: 0.43565671480743695 vs 0.435656714807437)
    assert [s["user_id"] for s in summary["scores"]] == known
    assert np.allclose([s["score"] for s in summary["scores"]], outcome.online["score"].tolist()[:2],
                       rtol=1e-12, atol=0)


def test_the_tables_were_only_read(trained):
    assert _snapshots(trained["cfg"]) == trained["before"]  # two model runs later, not one new snapshot


def test_the_command_line_says_in_one_line_what_is_missing_or_wrong(tmp_path):
    """Before the pipeline ran, or with a --score-at that is no instant: one line each, no traceback, and
    the bad --score-at before any training."""
    import subprocess
    import sys

    from examples.train_model import main

    with pytest.raises(SystemExit, match=r"^silver\.\w+ does not exist: run the pipeline first \(make run\)$"):
        main([f"data_dir={tmp_path}", *SMALL])
    with pytest.raises(SystemExit, match=r"^--score-at 'yesterday-ish' is not an ISO-8601 instant or 'now'$"):
        main([f"data_dir={tmp_path}", "--score-at", "yesterday-ish"])
    done = subprocess.run([sys.executable, "-m", "examples.train_model", f"data_dir={tmp_path}", "no_such_key=1"],
                          capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1, done.stderr
