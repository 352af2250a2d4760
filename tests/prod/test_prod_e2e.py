"""The standard pipeline with profile=prod on the 3-node Ray cluster and the stand-in services, end to end.

Each service is inspected directly (Ray's state API, PostgreSQL tables, object-store listings, Redis
hashes, the MLflow server over HTTP and its database), and gold is compared with the local profile's
gold for the same sample, row for row.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sqlalchemy

from tests.prod.conftest import ROOT, assert_gold_equals_local, gold_frame, prod_catalog, summary_of

pytestmark = pytest.mark.prod


@pytest.fixture(scope="module")
def prod_run(prod, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("prod-run")
    proc = subprocess.Popen([sys.executable, "-m", "pipelines", "run", *prod.overrides("main", data_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=prod.env)
    stdout, stderr = proc.communicate()
    out = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    return {"summary": summary_of(out), "driver_pid": proc.pid, "data_dir": data_dir}


def _s3(stack):
    import boto3

    return boto3.client("s3", endpoint_url=stack["AWS_ENDPOINT_URL"], region_name=stack["AWS_REGION"],
                        aws_access_key_id=stack["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=stack["AWS_SECRET_ACCESS_KEY"])


def _object_keys(stack, prefix: str) -> set:
    pages = _s3(stack).get_paginator("list_objects_v2").paginate(Bucket=stack["MEDALLION_BUCKET"], Prefix=prefix)
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


def test_tasks_ran_on_both_worker_nodes_of_the_cluster(prod_run, stack):
    from ray.util.state import list_jobs, list_nodes, list_tasks

    address = stack["MEDALLION_RAY_DASHBOARD"]
    # a node killed by the worker-loss test stays listed as DEAD on a stack that stays up
    nodes = {n.node_id: n for n in list_nodes(address=address, detail=True) if n.state == "ALIVE"}
    assert len(nodes) == 3 and sum(n.is_head_node for n in nodes.values()) == 1
    jobs = [j for j in list_jobs(address=address)
            if j.driver_info is not None and j.driver_info.pid == str(prod_run["driver_pid"])]
    assert len(jobs) == 1, "the run's driver is not a job of the cluster"
    tasks = list_tasks(address=address, filters=[("job_id", "=", jobs[0].job_id)], limit=10_000, detail=True,
                       raise_on_missing_output=False)
    finished = [t for t in tasks if t.state == "FINISHED" and t.node_id]
    workers = {node_id for node_id, n in nodes.items() if not n.is_head_node}
    per_node = {node_id: sum(t.node_id == node_id for t in finished) for node_id in nodes}
    assert all(per_node[w] >= 5 for w in workers), per_node  # both worker nodes did real work
    # the head has no CPUs: only Ray's zero-CPU bookkeeping tasks may land there
    on_head = [t for t in finished if t.node_id not in workers]
    assert all(not (t.required_resources or {}).get("CPU") for t in on_head), \
        sorted({(t.name, str(t.required_resources)) for t in on_head})


def test_workers_run_the_code_shipped_by_the_driver(stack, prod):
    script = """
        import json, os, ray
        import pipelines
        from pipelines import ray_runtime
        from pipelines.config import load_config
        cfg = load_config(["profile=prod", f"datasets.transactions.path={os.environ['MEDALLION_LANDING']}/tx",
                           f"datasets.users.uri={os.environ['MEDALLION_USERS_DB_URI']}"])
        ray_runtime.start(cfg.ray)

        @ray.remote(num_cpus=1)
        def where():
            import pipelines, validation
            return {"pipelines": pipelines.__file__, "validation": validation.__file__,
                    "key": os.environ.get("AWS_ACCESS_KEY_ID")}

        print(json.dumps({"driver": pipelines.__file__, "worker": ray.get(where.remote())}))
    """
    env = {k: v for k, v in prod.env.items()}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                         cwd="/", env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["driver"].startswith(str(ROOT))
    for module in ("pipelines", "validation"):  # unpacked from the runtime env, not imported from this checkout
        assert "/runtime_resources/py_modules_files/" in result["worker"][module]
        assert not result["worker"][module].startswith(str(ROOT))
    # the nodes were started without object-store credentials: the workers hold the driver's
    assert result["worker"]["key"] == stack["AWS_ACCESS_KEY_ID"]


def test_gold_equals_the_local_profile_gold(prod_run, pipeline_run, stack):
    assert_gold_equals_local(prod_run["summary"], stack, pipeline_run["summary"])


def test_iceberg_metadata_in_postgres_and_files_in_the_object_store(prod_run, stack):
    summary = prod_run["summary"]
    catalog_name, warehouse = summary["catalog"]["name"], summary["catalog"]["properties"]["warehouse"]
    assert warehouse.startswith("s3://")
    engine = sqlalchemy.create_engine(stack["MEDALLION_CATALOG_URI"])
    with engine.connect() as conn:
        rows = conn.execute(sqlalchemy.text(
            "SELECT table_namespace, table_name, metadata_location FROM iceberg_tables WHERE catalog_name = :c"),
            {"c": catalog_name}).all()
    engine.dispose()
    locations = {f"{ns}.{name}": location for ns, name, location in rows}
    assert set(locations) == set(summary["tables"]) | {"quality.check_results", "quality.day_rows"}  # + the gate's history
    bucket = stack["MEDALLION_BUCKET"]
    prefix = warehouse[len(f"s3://{bucket}/"):]
    keys = _object_keys(stack, prefix)
    catalog = prod_catalog(summary, stack)
    for identifier, location in locations.items():
        assert location.startswith(f"{warehouse}/"), location
        assert location[len(f"s3://{bucket}/"):] in keys  # the current metadata file is in the object store
        table = catalog.load_table(identifier)
        assert table.metadata_location == location
        data_files = [task.file.file_path for task in table.scan().plan_files()]
        if identifier not in summary["tables"] or summary["tables"][identifier]["rows"]:
            assert data_files, identifier
        for path in data_files:
            assert path.startswith(f"s3://{bucket}/") and path[len(f"s3://{bucket}/"):] in keys, path
            assert path.endswith(".parquet")
    # the driver's disk holds logs, the rendered Feast config and a copy of the quality report (the report
    # itself is an MLflow artifact), nothing the data lives in
    data_dir = Path(summary["data_dir"])
    files = sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob("*") if p.is_file())
    assert files and all(f.startswith("logs/") and f.endswith(".jsonl") or f == "feast/feature_store.yaml"
                         or f.startswith("reports/") and f.endswith(".html") for f in files), files


def test_feast_online_features_are_served_from_redis(prod_run, stack):
    import redis
    import yaml
    from feast import FeatureStore
    from feast.infra.online_stores.helpers import _mmh3, _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    summary = prod_run["summary"]
    rendered = yaml.safe_load((Path(summary["feast_repo"]) / "feature_store.yaml").read_text())
    assert rendered["online_store"] == {"type": "redis", "connection_string": stack["MEDALLION_REDIS"],
                                        "skip_dedup": True}
    assert rendered["registry"]["registry_type"] == "sql"
    assert rendered["registry"]["path"] == stack["MEDALLION_CATALOG_URI"]
    gold = gold_frame(prod_catalog(summary, stack), "user_spend_daily")
    latest = gold.groupby("user_id").tail(1).set_index("user_id")
    # this run wrote them (the keys do not tell runs apart: a stack kept up would hold an earlier session's)
    assert summary["counts"]["user_spend_daily.online_entities_written"] == len(latest)
    host, port, db = stack["MEDALLION_REDIS"].replace(",db=", ":").split(":")
    client = redis.Redis(host=host, port=int(port), db=int(db))

    def key(user_id: int) -> bytes:
        entity = EntityKey(join_keys=["user_id"], entity_values=[Value(int64_val=int(user_id))])
        return _redis_key("medallion", entity, 3)

    # every user's newest gold row is in Redis, read straight from the hash Feast writes
    for user_id, row in latest.iterrows():
        stored = client.hgetall(key(user_id))
        assert stored, user_id
        spend = Value.FromString(stored[_mmh3("user_spend_daily:spend_30d")]).double_val
        count = Value.FromString(stored[_mmh3("user_spend_daily:tx_count_90d")]).int64_val
        assert (spend, count) == (row["spend_30d"], row["tx_count_90d"]), user_id
    # and Feast serves its online lookups from there: the same values; none once the hash is gone
    store = FeatureStore(repo_path=summary["feast_repo"])
    users = [int(u) for u in latest.index[:5]]
    refs = ["user_spend_daily:spend_30d", "user_spend_daily:country"]
    online = store.get_online_features(features=refs, entity_rows=[{"user_id": u} for u in users]).to_df()
    assert online["spend_30d"].tolist() == [latest.loc[u, "spend_30d"] for u in users]
    assert online["country"].tolist() == [latest.loc[u, "country"] for u in users]
    saved = client.hgetall(key(users[0]))
    client.delete(key(users[0]))
    try:
        gone = store.get_online_features(features=refs, entity_rows=[{"user_id": users[0]}]).to_dict()
        assert gone["spend_30d"] == [None] and gone["country"] == [None]
    finally:
        client.hset(key(users[0]), mapping=saved)


def test_mlflow_run_dataset_inputs_and_artifacts_are_on_the_tracking_server(prod_run, stack):
    from mlflow.tracking import MlflowClient

    summary = prod_run["summary"]
    assert summary["mlflow"]["tracking_uri"] == stack["MLFLOW_TRACKING_URI"]
    assert summary["mlflow"]["tracking_uri"].startswith("http://")
    client = MlflowClient(tracking_uri=stack["MLFLOW_TRACKING_URI"])
    run_id = summary["mlflow"]["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["profile"] == "prod"
    assert run.data.metrics["transactions.quarantined"] == summary["quarantined"]["transactions"]
    named = {(json.loads(i.dataset.source)["identifier"], next(t.value for t in i.tags if t.key == "mlflow.data.context")):
             json.loads(i.dataset.source)["snapshot_id"] for i in run.inputs.dataset_inputs}
    written = {identifier: snapshot for (identifier, context), snapshot in named.items() if context == "written"}
    assert written == {i: t["snapshot_id"] for i, t in summary["tables"].items()}  # the first run wrote every table
    # the server keeps them in its PostgreSQL backend store...
    engine = sqlalchemy.create_engine(stack["MEDALLION_CATALOG_URI"].rsplit("/", 1)[0] + "/medallion_mlflow")
    with engine.connect() as conn:
        status = conn.execute(sqlalchemy.text("SELECT status FROM runs WHERE run_uuid = :r"), {"r": run_id}).scalar()
        inputs = conn.execute(sqlalchemy.text(
            "SELECT count(*) FROM inputs WHERE destination_type = 'RUN' AND destination_id = :r"), {"r": run_id}).scalar()
    engine.dispose()
    assert status == "FINISHED" and inputs == len(named)
    # ...and the run's artifacts in the object store, through the server
    assert [a.path for a in client.list_artifacts(run_id)] == ["config.json", "quality"]
    report = Path(summary["quality"]["report"]).name
    assert {a.path for a in client.list_artifacts(run_id, "quality")} == {"quality/checks.json", f"quality/{report}"}
    config_keys = [k for k in _object_keys(stack, "mlflow/") if k.endswith(f"{run_id}/artifacts/config.json")]
    assert len(config_keys) == 1
    body = _s3(stack).get_object(Bucket=stack["MEDALLION_BUCKET"], Key=config_keys[0])["Body"].read()
    assert json.loads(body)["catalog"]["name"] == summary["catalog"]["name"]
