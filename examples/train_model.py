"""A model on the pipeline's features, end to end: labels, training set, fit, MLflow, online scoring.

    make run                                              # the sample project, built and published
    .venv/bin/python -m examples.train_model              # prints one JSON summary line
    .venv/bin/python -m examples.train_model --threshold 150 --users 3,17,42 data_dir=/tmp/x   # options, overrides

The question: will a user spend more than X in the next 7 days? (A spend/churn label: `--threshold 0`
asks "will the user buy anything at all".) Steps:

1. **Labels** from `silver.transactions` (read at its current snapshot, which is recorded): every
   `--every-days` midnight T from the first data day + `--warmup-days` to the last full horizon, one label
   per user already seen before T, `future_spend` = the sum of the user's amounts with T <= ts < T + 7
   days (in cents, exactly), `label` = future_spend > X. X defaults to the median future spend over all
   labels, to the cent below, so both classes occur on any data where users differ; it is logged. The
   features at T only see events before T (a window holds `as_of - N days <= ts < as_of`), so nothing
   of the label's week leaks in.
2. **Training set**: `serving.training_set.build` (what `build_training_set` returns, plus its run id
   and the snapshots it read) joins each label point in time to `gold.<feature set>` at one pinned
   snapshot.
3. **MLflow**, linked both ways. The model run (`train-model`) is the parent; the training set is logged
   by `build` into a *nested child run* (`training-set`) started inside it, because a training-set run
   holds exactly one training set (labels artifact, spec, digests) and is what
   `training_set_from_run(cfg, <child id>)` rebuilds bit for bit. The parent is tagged
   `training_set_run_id=<child id>` (the child carries MLflow's `mlflow.parentRunId`), and lists the
   gold snapshot(s) the rows were read from as dataset inputs (context `training`) and the silver
   snapshot the labels came from (context `labels`): "which data made this model" is answered on the
   model run itself.
4. **Model**: a scikit-learn pipeline (median imputation with missing-value indicators and scaling for
   the numeric features, one-hot for strings, "missing" for their nulls; logistic regression), fitted on
   every label time but the last and evaluated out of time on the last. Logged with
   `mlflow.sklearn.log_model` in the skops format (the safe one; the only type skops does not trust by
   itself here is `numpy.dtype`, allowed explicitly), `pyfunc` predicting `predict_proba`.
5. **Load it back** (`mlflow.sklearn.load_model`, `mlflow.pyfunc.load_model`): MLflow 3.17 refuses to
   deserialize any model, skops included, unless `MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true`; the example
   sets it only while loading the model it has just logged itself.
6. **Online scoring**: `serving.online.get_online_features` for the entities asked for (`--users`,
   default the 10 lowest user ids seen), scored by the loaded pyfunc model. Staleness: a row older than
   the view's ttl (1 day; `--max-age-hours` to change) counts as missing, exactly as the point-in-time
   join treats it in training. Ages are measured at `--score-at`, by default the config's logical date
   (`cutoff`): the sample's data is months old, so against the wall clock every row would be STALE and
   every user would get the no-data score. A live project without a cutoff measures at the end of the
   current UTC day; pass `--score-at now` for the wall clock.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import PipelineConfig
from pipelines.errors import PipelineError

FEATURE_SET = "user_spend_daily"
AMOUNT = "amount"  # the column of the feature set's source dataset that the label sums
LABEL, FUTURE_SPEND = "label", "future_spend"
MODEL_NAME = "model"
SKOPS_TRUSTED = ["numpy.dtype"]  # what skops does not trust by itself in this pipeline (checked when logging)
DAY = dt.timedelta(days=1)


@dataclass
class Labels:
    frame: pd.DataFrame  # join key, ts (label time, a midnight UTC), future_spend, label
    threshold: float
    source: str  # silver.<dataset>
    source_snapshot: int
    label_times: List[pd.Timestamp]


@dataclass
class Outcome:
    model_run_id: str
    training_set_run_id: str
    model_uri: str
    model_id: str
    gold_snapshots: Dict[str, List[int]]
    labels: Labels
    features: List[str]
    training: pa.Table  # the training set, one row per label (what training_set_from_run rebuilds)
    model: Any  # the fitted scikit-learn pipeline, in process
    loaded: Any  # the same, loaded back from MLflow (sklearn flavor)
    metrics: Dict[str, float]
    online: pd.DataFrame  # the online read: join key, each feature and its __status, __as_of, then "score"
    score_at: pd.Timestamp

    def summary(self) -> Dict[str, Any]:
        key = self.online.columns[0]
        status = self.online[f"{self.features[0]}__status"]
        return {
            "model_run_id": self.model_run_id, "training_set_run_id": self.training_set_run_id,
            "model_uri": self.model_uri, "gold_snapshots": self.gold_snapshots,
            "labels": {"rows": int(len(self.labels.frame)), "positives": int(self.labels.frame[LABEL].sum()),
                       "threshold": self.labels.threshold,
                       "label_times": [t.isoformat() for t in self.labels.label_times],
                       "source": f"{self.labels.source}@{self.labels.source_snapshot}"},
            "metrics": self.metrics, "score_at": self.score_at.isoformat(),
            "scores": [{key: _plain(k), "score": float(s), "status": st}
                       for k, s, st in zip(self.online[key], self.online["score"], status)],
        }


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


# --- labels --------------------------------------------------------------------------------------
def make_labels(cfg: PipelineConfig, fs, horizon_days: int = 7, every_days: int = 3, warmup_days: int = 7,
                threshold: Optional[float] = None) -> Labels:
    """One label per (user seen before T, label time T): did the user spend more than the threshold in
    [T, T + horizon)? From the feature set's silver source at its current snapshot."""
    from pipelines.io.lake import Lake

    lake = Lake(cfg.catalog)
    source = f"silver.{fs.source_table}"
    if not lake.exists(source):
        raise SystemExit(f"{source} does not exist: run the pipeline first (make run)")
    snapshot = lake.table(source).current_snapshot()
    if snapshot is None:
        raise SystemExit(f"{source} has no snapshot: run the pipeline first (make run)")
    key, ts = fs.entity.join_key, fs.timestamp_column
    rows = lake.read_arrow(source, columns=[key, AMOUNT, ts], snapshot_id=snapshot.snapshot_id)
    cents = pc.multiply(rows.column(AMOUNT), 100).cast(pa.int64())  # decimal(., 2): exact
    events = pd.DataFrame({key: rows.column(key).to_numpy(),
                           "cents": cents.to_numpy(),
                           "us": rows.column(ts).cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy()})
    if events.empty:
        raise SystemExit(f"{source} is empty: nothing to label")
    first_day = pd.Timestamp(int(events.us.min()), unit="us", tz="UTC").normalize()
    end = pd.Timestamp(int(events.us.max()), unit="us", tz="UTC").normalize() + DAY  # the last data day's end
    horizon = pd.Timedelta(days=horizon_days)
    times, t = [], end - horizon
    while t >= first_day + pd.Timedelta(days=warmup_days):
        times.append(t)
        t -= pd.Timedelta(days=every_days)
    times.sort()
    if len(times) < 2:
        raise SystemExit(f"{source} spans {first_day.date()} to {end.date()}: too short for a {horizon_days}-day "
                         f"horizon after {warmup_days} warm-up days with two label times (--every-days, "
                         "--warmup-days)")
    first_seen = events.groupby(key)["us"].min()
    parts = []
    for t in times:
        start_us, stop_us = t.value // 1000, (t + horizon).value // 1000
        known = first_seen.index[first_seen.to_numpy() < start_us]
        window = events[(events.us >= start_us) & (events.us < stop_us)]
        spend = window.groupby(key)["cents"].sum().reindex(known, fill_value=0)
        parts.append(pd.DataFrame({key: known.to_numpy(), "ts": t, "cents": spend.to_numpy()}))
    frame = pd.concat(parts, ignore_index=True)
    limit_cents = int(np.floor(np.median(frame.cents))) if threshold is None else int(round(threshold * 100))
    cents = frame.pop("cents")
    frame[FUTURE_SPEND] = cents / 100
    frame[LABEL] = (cents > limit_cents).astype(np.int64)
    return Labels(frame, limit_cents / 100, source, snapshot.snapshot_id, times)


# --- the model -----------------------------------------------------------------------------------
def split_features(spec) -> tuple:
    numeric = [n for n, d in spec.features if d != "string"]
    strings = [n for n, d in spec.features if d == "string"]
    return numeric, strings


def design_matrix(frame: pd.DataFrame, spec) -> pd.DataFrame:
    """The model's input from a training set or an online read: numbers as float64 (null -> NaN), strings
    as text (null -> "missing"), in the declaration's order."""
    numeric, strings = split_features(spec)
    out = {}
    for name in spec.feature_names:
        column = frame[name]
        if name in numeric:
            out[name] = pd.to_numeric(column, errors="raise").astype("float64")
        else:
            text = column.astype(object)
            out[name] = text.where(text.notna(), "missing").astype(str).astype(object)
    return pd.DataFrame(out, index=frame.index)


def make_model(spec):
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric, strings = split_features(spec)
    steps = [("numbers", Pipeline([("impute", SimpleImputer(strategy="median", add_indicator=True)),
                                   ("scale", StandardScaler())]), numeric)]
    if strings:
        steps.append(("text", OneHotEncoder(handle_unknown="ignore"), strings))
    return Pipeline([("prepare", ColumnTransformer(steps)), ("classify", LogisticRegression(max_iter=1000))])


def evaluate(model, x: pd.DataFrame, y: np.ndarray) -> Dict[str, float]:
    from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

    if not len(y):
        return {}
    proba = model.predict_proba(x)[:, 1]
    metrics = {"rows": float(len(y)), "positive_rate": float(y.mean()),
               "accuracy": float(accuracy_score(y, proba > 0.5)), "log_loss": float(log_loss(y, proba, labels=[0, 1]))}
    if len(set(y.tolist())) == 2:
        metrics["roc_auc"] = float(roc_auc_score(y, proba))
    return metrics


@contextlib.contextmanager
def trusted_model_loading() -> Iterator[None]:
    """MLflow 3.17 deserializes no model (skops included) unless MLFLOW_ALLOW_PICKLE_DESERIALIZATION is
    true: allow it for the block only, to load the model this process has just logged."""
    name = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
    before = os.environ.get(name)
    os.environ[name] = "true"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


# --- online scoring ------------------------------------------------------------------------------
def score_online(source, model, spec, entities: Sequence[Any], now: Any = None,
                 max_age: Optional[dt.timedelta] = None) -> pd.DataFrame:
    """The online read (`serving.online.get_online_features`: a stale row's values are null, as a lapsed
    row is in training) of the entities, in order, with one "score" per entity: P(label = 1). `model`: a
    pyfunc model predicting probabilities, or a scikit-learn classifier. `source`: a config or a store."""
    from serving.online import get_online_features

    rows = [{spec.join_key: entity} for entity in entities]
    online = get_online_features(source, [f"{spec.name}:{f}" for f in spec.feature_names], rows,
                                 max_age=max_age, now=now)
    x = design_matrix(online, spec)
    proba = model.predict_proba(x) if hasattr(model, "predict_proba") else np.asarray(model.predict(x))
    online["score"] = np.asarray(proba)[:, 1]
    return online


# --- the whole loop ------------------------------------------------------------------------------
def run(cfg: PipelineConfig, feature_set: str = FEATURE_SET, horizon_days: int = 7, every_days: int = 3,
        warmup_days: int = 7, threshold: Optional[float] = None, users: Optional[Sequence[Any]] = None,
        score_at: Union[None, str, dt.datetime] = None, max_age: Optional[dt.timedelta] = None,
        version: Any = "latest") -> Outcome:
    import mlflow
    import mlflow.pyfunc
    import mlflow.sklearn
    import skops.io
    from mlflow.models import infer_signature

    from features.registry import feature_sets
    from pipelines.io.lake import Lake
    from serving import tracking, training_set

    spec = training_set.resolve_sets(cfg, [feature_set])[0]
    fs = next(s for s in feature_sets([spec.name], cfg.project))
    labels = make_labels(cfg, fs, horizon_days, every_days, warmup_days, threshold)
    lake = Lake(cfg.catalog)
    if cfg.profile == "local":
        os.makedirs(os.path.join(cfg.data_dir, "mlflow"), exist_ok=True)
    tags = {"model": f"spend_over_threshold_next_{horizon_days}d", "feature_set": spec.name,
            "label": f"sum({AMOUNT}) over [T, T + {horizon_days}d) > {labels.threshold}"}
    with tracking.tracked_run(cfg.tracking.tracking_uri, cfg.tracking.experiment, cfg.tracking.artifact_location,
                              run_name="train-model", tags=tags) as model_run_id:
        # the training set: its own (nested) run, which training_set_from_run rebuilds
        with mlflow.start_run(run_name="training-set", nested=True, tags={"training_set": "point_in_time"}):
            built = training_set.build(cfg, labels.frame, [spec.name], version=version, timestamp_column="ts")
        mlflow.set_tag("training_set_run_id", built.mlflow_run_id)
        for name, snapshots in built.snapshots.items():
            for snapshot_id in snapshots:
                tracking.log_table(lake.name, lake.properties, f"gold.{name}", snapshot_id, "training")
        tracking.log_table(lake.name, lake.properties, labels.source, labels.source_snapshot, "labels")

        frame = built.table.to_pandas()
        x, y = design_matrix(frame, spec), frame[LABEL].to_numpy()
        last = (frame["ts"] == frame["ts"].max()).to_numpy()
        if len(set(y[~last].tolist())) < 2:
            raise SystemExit(f"every training label is {y[0]} at threshold {labels.threshold}: pick another "
                             "--threshold")
        model = make_model(spec).fit(x[~last], y[~last])
        metrics = {f"train_{k}": v for k, v in evaluate(model, x[~last], y[~last]).items()}
        metrics.update({f"valid_{k}": v for k, v in evaluate(model, x[last], y[last]).items()})
        tracking.log_params({"feature_set": spec.name, "features": ",".join(spec.feature_names),
                             "label.horizon_days": str(horizon_days), "label.every_days": str(every_days),
                             "label.warmup_days": str(warmup_days), "label.threshold": str(labels.threshold),
                             "label.threshold_from": "median" if threshold is None else "given",
                             "label.source": f"{labels.source}@{labels.source_snapshot}",
                             "label.times": ",".join(t.strftime("%Y-%m-%d") for t in labels.label_times),
                             "split.valid_time": frame["ts"].max().isoformat(),
                             "model.class": "LogisticRegression", "model.max_iter": "1000"})
        tracking.log_metrics(metrics)

        untrusted = set(skops.io.get_untrusted_types(data=skops.io.dumps(model))) - set(SKOPS_TRUSTED)
        if untrusted:
            raise RuntimeError(f"skops does not trust {sorted(untrusted)} in this model: review them, then add "
                               "them to SKOPS_TRUSTED")
        proba = model.predict_proba(x)
        info = mlflow.sklearn.log_model(model, name=MODEL_NAME, serialization_format="skops",
                                        skops_trusted_types=SKOPS_TRUSTED, pyfunc_predict_fn="predict_proba",
                                        signature=infer_signature(x, proba))

        with trusted_model_loading():
            loaded = mlflow.sklearn.load_model(info.model_uri)
            served_model = mlflow.pyfunc.load_model(info.model_uri)
        if not np.array_equal(loaded.predict_proba(x), proba):
            raise RuntimeError(f"the model loaded back from {info.model_uri} predicts differently")

        at = _score_instant(cfg, score_at)
        entities = list(users) if users is not None else \
            sorted(labels.frame[spec.join_key].unique().tolist())[:10]
        online = score_online(cfg, served_model, spec, entities, now=at, max_age=max_age)
        counts = online[f"{spec.feature_names[0]}__status"].value_counts()
        tracking.log_metrics({f"scored_{status.lower()}": float(n) for status, n in counts.items()})
    return Outcome(model_run_id, built.mlflow_run_id, info.model_uri, info.model_id, built.snapshots, labels,
                   list(spec.feature_names), built.table, model, loaded, metrics, online, at)


def _score_instant(cfg: PipelineConfig, score_at: Union[None, str, dt.datetime]) -> pd.Timestamp:
    if score_at is None:
        return pd.Timestamp(cfg.cutoff_ts)
    if isinstance(score_at, str) and score_at == "now":
        return pd.Timestamp.now(tz="UTC")
    try:
        at = pd.Timestamp(score_at)
    except (ValueError, TypeError):
        raise SystemExit(f"--score-at {score_at!r} is not an ISO-8601 instant or 'now'") from None
    if at is pd.NaT:
        raise SystemExit(f"--score-at {score_at!r} is not an ISO-8601 instant or 'now'")
    return at.tz_localize("UTC") if at.tzinfo is None else at.tz_convert("UTC")


# --- command line --------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m examples.train_model",
                                     description="Train, log, load back and score a model on the features.")
    parser.add_argument("--project", help="the project directory (default: the shipped sample)")
    parser.add_argument("--feature-set", default=FEATURE_SET)
    parser.add_argument("--horizon-days", type=int, default=7, help="the label's look-ahead (default 7)")
    parser.add_argument("--every-days", type=int, default=3, help="days between label times (default 3)")
    parser.add_argument("--warmup-days", type=int, default=7, help="first label time after the first data day")
    parser.add_argument("--threshold", type=float, help="X in 'spends more than X' (default: the labels' median)")
    parser.add_argument("--users", help="comma-separated entity keys to score online (default: 10 lowest ids)")
    parser.add_argument("--score-at", help="the instant online ages are measured at: ISO-8601, 'now' "
                                           "(default: the config's cutoff)")
    parser.add_argument("--max-age-hours", type=float, help="online rows older than this are stale (default: ttl)")
    parser.add_argument("overrides", nargs="*", help="configuration overrides, as for medallion (key=value)")
    return parser


def main(argv: Union[None, Sequence[str], PipelineConfig] = None) -> Dict[str, Any]:
    """Run the example on a config (defaults) or a command line; the JSON-able summary."""
    if isinstance(argv, PipelineConfig):
        return run(argv).summary()
    from pipelines.config import load_config

    args = _parser().parse_intermixed_args(list(sys.argv[1:] if argv is None else argv))
    cfg = load_config(args.overrides, args.project)
    _score_instant(cfg, args.score_at)  # a bad --score-at is refused before minutes of training, not after
    users = [u.strip() for u in args.users.split(",") if u.strip()] if args.users else None
    max_age = dt.timedelta(hours=args.max_age_hours) if args.max_age_hours is not None else None
    return run(cfg, args.feature_set, args.horizon_days, args.every_days, args.warmup_days, args.threshold,
               users, args.score_at, max_age).summary()


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        print(json.dumps(main(), default=str), flush=True)
    except PipelineError as exc:  # a bad config or project: one line, as `medallion` prints it
        sys.exit(f"error: {exc}")
