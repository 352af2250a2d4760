"""`feast serve` and `feast ui` over HTTP, as subprocesses on free loopback ports, after the session's
pipeline run: what a service reading features over HTTP gets (values, statuses, errors, latency).

No timing is asserted: latencies are printed (`-s` shows them). A server is waited for while its process
lives (no deadline: a slow, busy machine only makes it slower) and always stopped, with its process group
(`feast serve` runs gunicorn workers)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List

import numpy as np
import pandas as pd
import pytest
import requests

pytestmark = pytest.mark.e2e

FEAST = str(Path(sys.executable).with_name("feast"))
REQUESTS = 200


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def _feast(command: str, repo: Path, ready_path: str, log: Path) -> Iterator[str]:
    """Start `feast -c <repo> <command>` on a free loopback port; yield its base URL once `ready_path`
    answers; stop it (the whole process group) whatever happens."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:  # a file, not a pipe: a full pipe would block the server's logging
        proc = subprocess.Popen([FEAST, "-c", str(repo), command, "-h", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"feast {command} exited with {proc.returncode}: {log.read_text()[-3000:]}")
            try:
                if requests.get(base + ready_path, timeout=10).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet
                pass
            time.sleep(0.2)
        yield base
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture(scope="module")
def setup(pipeline_run):
    from features.registry import feature_sets
    from pipelines.io.lake import Lake
    from serving.applied import repo_path
    from serving.publish import open_store

    cfg = pipeline_run["cfg"]
    sets = feature_sets(cfg.features.sets, cfg.project)
    lake = Lake(cfg.catalog)
    keys = {fs.name: sorted(set(lake.read_arrow(f"gold.{fs.name}", columns=[fs.entity.join_key])
                                .column(0).to_pylist())) for fs in sets}
    return cfg, sets, keys, open_store(cfg), repo_path(cfg)


@pytest.fixture(scope="module")
def server(setup, tmp_path_factory):
    with _feast("serve", setup[4], "/health", tmp_path_factory.mktemp("feast_serve") / "serve.log") as base:
        yield base


def _post(session: requests.Session, base: str, fs, keys: List[object]) -> requests.Response:
    return session.post(f"{base}/get-online-features",
                        json={"features": [f"{fs.name}:{n}" for n in fs.feature_names()],
                              "entities": {fs.entity.join_key: keys}})


def _same(a, b) -> bool:
    return (pd.isna(a) and pd.isna(b)) or a == b


def test_http_values_equal_online_values(setup, server):
    from serving.publish import online_values

    _, sets, keys, store, _ = setup
    with requests.Session() as session:
        for fs in sets:
            for n in (1, 100):
                asked = keys[fs.name][:n]
                response = _post(session, server, fs, asked)
                assert response.status_code == 200, response.text
                body = response.json()
                got = dict(zip(body["metadata"]["feature_names"], body["results"]))  # in Feast's order
                assert sorted(got) == sorted([fs.entity.join_key, *fs.feature_names()])
                assert got.pop(fs.entity.join_key)["values"] == asked
                expected = online_values(store, fs, asked)
                for name, result in got.items():
                    assert len(result["values"]) == len(asked) == len(expected[name]), (fs.name, name)
                    assert all(_same(a, b) for a, b in zip(result["values"], expected[name])), (fs.name, name)
                    # over HTTP too, Feast ignores the ttl: rows from the sample's past come back PRESENT
                    assert set(result["statuses"]) == {"PRESENT"}


def test_http_latency_p50_p99(setup, server):
    """200 POSTs per size on one keep-alive connection after 10 warm-up requests, timed on the client
    (`perf_counter` around each request: serialization, loopback, Feast's read, JSON)."""
    _, sets, keys, _, _ = setup
    fs = max(sets, key=lambda s: len(keys[s.name]))  # the set with the most entities
    with requests.Session() as session:
        for n in (1, 100):
            asked = (keys[fs.name] * 100)[:n]
            for _ in range(10):
                _post(session, server, fs, asked).raise_for_status()
            times = []
            for _ in range(REQUESTS):
                start = time.perf_counter()
                response = _post(session, server, fs, asked)
                times.append((time.perf_counter() - start) * 1000)
                assert response.status_code == 200
            p50, p99 = np.percentile(times, [50, 99])
            print(f"\nfeast serve {fs.name} ({len(fs.feature_names())} features), {n} entit{'y' if n == 1 else 'ies'}"
                  f" ({len(set(asked))} distinct): p50 {p50:.2f} ms, p99 {p99:.2f} ms over {REQUESTS} requests")


def test_http_unknown_feature(setup, server):
    """What Feast's server answers (recorded here, so a Feast upgrade that changes it is noticed): an unknown
    feature of a known view is a 500 whose body is the KeyError's text, naming no valid feature; an
    unknown view a 404 naming the view."""
    _, sets, keys, _, _ = setup
    fs = sets[0]
    entities = {fs.entity.join_key: keys[fs.name][:1]}
    response = requests.post(f"{server}/get-online-features",
                             json={"features": [f"{fs.name}:no_such_feature"], "entities": entities})
    print(f"\nunknown feature: HTTP {response.status_code} {response.text}")
    assert response.status_code == 500
    assert "Feature no_such_feature not found in projection " + fs.name in response.json()
    response = requests.post(f"{server}/get-online-features",
                             json={"features": ["no_such_set:x"], "entities": entities})
    print(f"unknown feature view: HTTP {response.status_code} {response.text}")
    assert response.status_code == 404
    assert "FeatureViewNotFoundException" in response.text and "no_such_set" in response.text


def test_feast_ui_answers_200(setup, tmp_path):
    """`feast ui` needs grpcio-health-checking and grpcio-reflection (feast's `grpcio` extra): without them
    it dies on start-up with ModuleNotFoundError."""
    _, sets, _, store, repo = setup
    with _feast("ui", repo, "/", tmp_path / "ui.log") as base:
        page = requests.get(base + "/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        views = requests.get(f"{base}/api/v1/feature_views", params={"project": store.project})
        assert views.status_code == 200
        assert all(fs.name in views.text for fs in sets)
