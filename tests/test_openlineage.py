"""OpenLineage events of a run (pipelines/lineage_events.py), received over HTTP on loopback.

One run of the small sample sends its events to a tiny receiver in this test. They are checked against the
OpenLineage specification's JSON schemas (tests/openlineage_spec: spec/OpenLineage.json and
spec/facets/*.json of the OpenLineage repository, the version openlineage-python 1.54.0 is generated from;
the client ships no schema files) and our custom facets' schema (pipelines/lineage_facets.json), and rebuilt
with the client's own model classes (their validators: run ids, event times, producers). Then: START and
COMPLETE per stage, parent facets pointing to the pipeline run, the MLflow run on the pipeline run, the
column lineage of a gold feature traced back to the source's column, and a rerun with the receiver down.
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from tests.conftest import small_config

pytestmark = pytest.mark.e2e

SPEC = Path(__file__).with_name("openlineage_spec")
CUSTOM = Path(__file__).resolve().parent.parent / "pipelines" / "lineage_facets.json"
STAGES = ["plan", "ingest", "refine", "build", "quality", "publish", "track"]


class _Receiver(BaseHTTPRequestHandler):
    events: List[dict] = []
    paths: List[str] = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).events.append(json.loads(body))
        type(self).paths.append(self.path)
        self.send_response(201)
        self.end_headers()

    def log_message(self, *_):
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lineage_run(tmp_path_factory, ray_session):
    from examples.sample.generate import generate
    from pipelines.run import run

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    data_dir = tmp_path_factory.mktemp("openlineage")
    try:
        cfg = small_config(data_dir, "lineage.transport=http", f"lineage.url=http://127.0.0.1:{server.server_port}")
        generate(cfg.sample)
        summary = run(cfg)
    finally:
        server.shutdown()
        server.server_close()
    return {"cfg": cfg, "summary": summary, "events": list(_Receiver.events), "paths": list(_Receiver.paths),
            "data_dir": data_dir}


def _validator():
    from jsonschema import Draft202012Validator, FormatChecker
    from referencing import Registry, Resource

    resources = []
    for path in [SPEC / "OpenLineage.json", *sorted((SPEC / "facets").glob("*.json")), CUSTOM]:
        schema = json.loads(path.read_text())
        resources.append((schema["$id"], Resource.from_contents(schema)))
    registry = Registry().with_resources(resources)

    def validate(instance: dict, ref: str) -> None:
        Draft202012Validator({"$ref": ref}, registry=registry, format_checker=FormatChecker()).validate(instance)

    return validate


def _facets(event: dict) -> List[Tuple[str, str, dict]]:
    """(where, key, facet) of every facet of an event."""
    out = [("run", k, v) for k, v in (event["run"].get("facets") or {}).items()]
    out += [("job", k, v) for k, v in (event["job"].get("facets") or {}).items()]
    for side, extra in (("inputs", "inputFacets"), ("outputs", "outputFacets")):
        for ds in event.get(side) or []:
            for group in ("facets", extra):
                out += [(f"{side}:{ds['name']}", k, v) for k, v in (ds.get(group) or {}).items()]
    return out


def test_events_follow_the_spec_and_pair_up(lineage_run):
    from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
    from openlineage.client.facet_v2 import parent_run

    events, summary, cfg = lineage_run["events"], lineage_run["summary"], lineage_run["cfg"]
    assert events and set(lineage_run["paths"]) == {"/api/v1/lineage"}
    assert summary["lineage"]["events_sent"] == len(events)
    assert summary["lineage"]["events_failed"] == summary["lineage"]["events_dropped"] == 0

    validate = _validator()
    kinds = set()
    for event in events:
        # the specification: the event, then each facet against the schema its _schemaURL names (which
        # must be one of the vendored versions: the client's facets and the spec agree)
        validate(event, "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent")
        for where, key, facet in _facets(event):
            validate(facet, facet["_schemaURL"])
            kinds.add(key)
        # the client's own model classes, with their validators (uuid run ids, ISO event times, ...)
        rebuilt = RunEvent(
            eventType=RunState(event["eventType"]), eventTime=event["eventTime"],
            run=Run(runId=event["run"]["runId"]), job=Job(namespace=event["job"]["namespace"], name=event["job"]["name"]),
            inputs=[InputDataset(namespace=d["namespace"], name=d["name"]) for d in event.get("inputs", [])],
            outputs=[OutputDataset(namespace=d["namespace"], name=d["name"]) for d in event.get("outputs", [])],
            producer=event["producer"])
        assert rebuilt.run.runId == event["run"]["runId"]
        parent = (event["run"].get("facets") or {}).get("parent")
        if parent is not None:
            parent_run.ParentRunFacet(run=parent_run.Run(runId=parent["run"]["runId"]),
                                      job=parent_run.Job(**{k: parent["job"][k] for k in ("namespace", "name")}))
    assert {"schema", "columnLineage", "parent", "dataQualityMetrics", "dataQualityAssertions", "catalog",
            "version", "medallion_mlflow", "medallion_run", "jobType"} <= kinds

    project = Path(cfg.project).name
    pipeline = [e for e in events if e["job"]["name"] == f"{project}.run"]
    assert [e["eventType"] for e in pipeline] == ["START", "COMPLETE"]
    run_uuid = pipeline[0]["run"]["runId"]
    assert pipeline[1]["run"]["runId"] == run_uuid == summary["lineage"]["run_id"]
    facets = pipeline[1]["run"]["facets"]
    assert facets["medallion_mlflow"]["runId"] == summary["mlflow"]["run_id"]
    assert facets["medallion_run"]["runId"] == summary["run_id"]

    for stage in STAGES:
        mine = [e for e in events if e["job"]["name"] == f"{project}.run.{stage}"]
        assert [e["eventType"] for e in mine] == ["START", "COMPLETE"], stage
        assert mine[0]["run"]["runId"] == mine[1]["run"]["runId"] != run_uuid
        for e in mine:
            parent = e["run"]["facets"]["parent"]
            assert parent["run"]["runId"] == run_uuid
            assert (parent["job"]["namespace"], parent["job"]["name"]) == (cfg.lineage.namespace, f"{project}.run")
    # the pipeline run starts first and completes last
    assert events[0] is pipeline[0] and events[-1] is pipeline[1]

    # naming: Iceberg tables in the warehouse's namespace by identifier, file sources in `file`
    warehouse = cfg.catalog.warehouse.rstrip("/")
    ingest = next(e for e in events if e["job"]["name"].endswith(".ingest") and e["eventType"] == "COMPLETE")
    assert {(d["namespace"], d["name"]) for d in ingest["outputs"]} == {(warehouse, f"bronze.{d}") for d in cfg.datasets}
    files = [d for d in cfg.datasets.values() if d.kind == "files"]
    assert {(d["namespace"], d["name"]) for d in ingest["inputs"] if d["namespace"] == "file"} == \
        {("file", str(Path(d.path).resolve())) for d in files}

    # data quality: completeness as column metrics of the measured bronze table, the gate's checks as assertions
    quality = next(e for e in events if e["job"]["name"].endswith(".quality") and e["eventType"] == "COMPLETE")
    measured = {d["name"]: d["inputFacets"] for d in quality["inputs"]}
    for name, dataset in cfg.datasets.items():
        metrics = measured[f"bronze.{name}"]["dataQualityMetrics"]
        assert metrics["rowCount"] == summary["counts"][f"{name}.bronze_rows_refined"]
        assert set(metrics["columnMetrics"]) == set(dataset.columns)
        assert all(0 <= m["nullCount"] <= metrics["rowCount"] for m in metrics["columnMetrics"].values())
        assert {a["name"] for a in measured[f"bronze.{name}"]["dataQualityAssertions"]["assertions"]} >= \
            {f"completeness.{name}.{c}" for c in dataset.columns}


def _trace(events: List[dict], namespace: str, name: str, column: str) -> List[Tuple[str, str, str]]:
    """The chain of DIRECT input fields from (namespace, name, column) back to a column nothing derives."""
    lineage: Dict[Tuple[str, str], dict] = {}
    for event in events:
        for ds in event.get("outputs") or []:
            facet = (ds.get("facets") or {}).get("columnLineage")
            if facet:
                lineage[(ds["namespace"], ds["name"])] = facet["fields"]
    chain = [(namespace, name, column)]
    while (chain[-1][0], chain[-1][1]) in lineage:
        ns, nm, col = chain[-1]
        inputs = lineage[(ns, nm)].get(col, {}).get("inputFields", [])
        direct = [f for f in inputs if any(t["type"] == "DIRECT" for t in f.get("transformations", []))]
        assert len(direct) == 1, (ns, nm, col, inputs)
        chain.append((direct[0]["namespace"], direct[0]["name"], direct[0]["field"]))
    return chain


def test_gold_feature_traced_back_to_its_source_column(lineage_run):
    from pipelines.lineage_events import source_dataset
    from features.registry import feature_sets

    cfg, events = lineage_run["cfg"], lineage_run["events"]
    # a sum of the events' amount without a filter, found from the declarations
    fs, agg = next((fs, agg) for fs in feature_sets(cfg.features.sets, cfg.project) for agg in fs.aggregations
                   if agg.agg == "sum" and agg.column == "amount" and agg.where is None)
    feature = agg.feature_names()[0]
    warehouse = cfg.catalog.warehouse.rstrip("/")
    chain = _trace(events, warehouse, f"gold.{fs.name}", feature)
    source = cfg.datasets[fs.source_table]
    assert chain == [(warehouse, f"gold.{fs.name}", feature),
                     (warehouse, f"silver.{fs.source_table}", agg.column),
                     (warehouse, f"bronze.{fs.source_table}", agg.column),
                     (*source_dataset(source), agg.column)]
    # the aggregation is named, and so are the indirect inputs (the entity it groups by, the window's clock)
    build = next(e for e in events if e["job"]["name"].endswith(".build") and e["eventType"] == "COMPLETE")
    gold = next(d for d in build["outputs"] if d["name"] == f"gold.{fs.name}")
    inputs = gold["facets"]["columnLineage"]["fields"][feature]["inputFields"]
    kinds = {(f["field"], t["type"], t["subtype"]) for f in inputs for t in f["transformations"]}
    assert {(agg.column, "DIRECT", "AGGREGATION"), (fs.entity.join_key, "INDIRECT", "GROUP_BY"),
            (fs.timestamp_column, "INDIRECT", "WINDOW")} <= kinds
    # every gold column of the table has lineage, attributes from the entity table included
    assert set(gold["facets"]["columnLineage"]["fields"]) >= set(fs.feature_names())


def test_receiver_down_does_not_fail_the_run(lineage_run):
    """A rerun (no new data: quick) with the receiver gone: it succeeds; failures are counted and logged."""
    from pipelines.config import load_config
    from pipelines.run import run

    cfg = lineage_run["cfg"]
    down = load_config([f"data_dir={lineage_run['data_dir']}", *_overrides(cfg),
                        "lineage.transport=http", f"lineage.url=http://127.0.0.1:{_free_port()}",
                        "lineage.timeout_seconds=1", "lineage.max_failures=2"])
    summary = run(down)
    assert summary["status"] in ("succeeded", "succeeded_with_rejections") and not summary["new_data"]
    counted = summary["lineage"]
    assert counted["events_sent"] == 0 and counted["events_failed"] == 2 and counted["events_dropped"] >= 1
    log = Path(lineage_run["data_dir"]) / "logs" / f"{summary['run_id']}.jsonl"
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert sum(line.get("event") == "lineage event not delivered" for line in lines) == 2
    assert any(line.get("event") == "lineage event dropped: the receiver failed too often in this run" for line in lines)


def _overrides(cfg) -> List[str]:
    from tests.conftest import SMALL

    return list(SMALL)
