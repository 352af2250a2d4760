"""The prod profile refuses to start, in one line naming what and where, before touching any service.

No service is needed here: every location points at a closed loopback port, so a check that ran too late
would show up as a connection error instead of the expected message.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.prod

from pipelines.cli import main

CLOSED = "127.0.0.1:9"  # discard port: nothing listens there
LOCATIONS = {
    "RAY_ADDRESS": CLOSED,
    "MEDALLION_CATALOG_URI": f"postgresql+psycopg2://nobody@{CLOSED}/catalog",
    "MEDALLION_WAREHOUSE": "s3://bucket/warehouse",
    "MEDALLION_REDIS": f"{CLOSED},db=0",
    "MLFLOW_TRACKING_URI": f"http://{CLOSED}",
}
# where the sample project's sources are in production: set per deployment, like any dataset's location
SAMPLE_SOURCES = ["datasets.transactions.path=s3://bucket/landing/transactions",
                  f"datasets.users.uri=postgresql+psycopg2://nobody@{CLOSED}/app"]
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "cred-key-5150", "AWS_SECRET_ACCESS_KEY": "cred-secret-8311",
               "PIPELINE_PII_KEY": "cred-pii-2207"}


@pytest.fixture
def prod_env(monkeypatch, tmp_path):
    for name in ("AWS_ENDPOINT_URL", "AWS_REGION", *LOCATIONS, *CREDENTIALS):
        monkeypatch.delenv(name, raising=False)
    for name, value in {**LOCATIONS, **CREDENTIALS}.items():
        monkeypatch.setenv(name, value)
    return ["profile=prod", f"data_dir={tmp_path}", *SAMPLE_SOURCES]


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


def test_missing_credentials_are_named_before_anything_starts(prod_env, monkeypatch, capsys):
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("PIPELINE_PII_KEY", "")  # set but empty counts as missing
    err = _error(capsys, ["run", *prod_env])
    assert err == ("error: environment variable(s) AWS_SECRET_ACCESS_KEY, PIPELINE_PII_KEY not set: profile=prod "
                   "takes its credentials only from the environment (required_env)")


def test_a_missing_location_variable_is_named(prod_env, monkeypatch, capsys):
    monkeypatch.delenv("MEDALLION_CATALOG_URI")
    err = _error(capsys, ["run", *prod_env])
    assert "MEDALLION_CATALOG_URI" in err and err.startswith("error: config error: ")


@pytest.mark.parametrize("override, named", [
    ("datasets.transactions.path=/landing/transactions", "datasets.transactions.path='/landing/transactions'"),
    ("catalog=sqlite", "catalog.warehouse="),
    ("catalog.warehouse=file:///lake", "catalog.warehouse='file:///lake'"),
    ("online_store=sqlite", "online_store.type='sqlite' must be redis"),
    ("registry=file", "registry.type='file' must be sql"),
    ("tracking=local", "tracking.tracking_uri='sqlite:///"),
    ("datasets.users.uri=sqlite:///users.db", "datasets.users.uri must name a database server"),
])
def test_nothing_on_the_drivers_disk(prod_env, capsys, override, named):
    err = _error(capsys, ["run", *prod_env, override])
    assert err.startswith("error: config error: profile=prod: ") and named in err, err


def test_a_prod_run_needs_its_logical_date(prod_env, capsys, tmp_path):
    """A project of one's own carries no sample's cutoff: in prod the run's logical date must be given (a
    default would quarantine every event after it, or let the wall clock decide run by run)."""
    from pipelines.project_template import write_project

    project = write_project(tmp_path / "project")
    settings = project / "conf" / "project.yaml"
    settings.write_text("\n".join(line for line in settings.read_text().splitlines() if not line.startswith("cutoff")))
    sources = ["datasets.orders.path=s3://bucket/orders", "datasets.customers.path=s3://bucket/customers"]
    err = _error(capsys, ["run", "--project", str(project), "profile=prod", f"data_dir={tmp_path}", *sources])
    assert err.startswith("error: config error: profile=prod: cutoff must be set"), err
    assert main(["config", "--project", str(project), "profile=prod", f"data_dir={tmp_path}", *sources,
                 "cutoff=2026-05-01T00:00:00Z"]) == 0


def test_a_missing_ray_address_is_named(prod_env, monkeypatch, capsys):
    monkeypatch.delenv("RAY_ADDRESS")
    err = _error(capsys, ["config", *prod_env])
    assert "RAY_ADDRESS" in err


def test_no_credential_value_reaches_the_resolved_config(prod_env, capsys):
    # the resolved config is what MLflow params, the config artifact and the run summary are made of
    assert main(["config", *prod_env]) == 0
    printed = capsys.readouterr().out
    assert '"profile": "prod"' in printed
    for value in CREDENTIALS.values():
        assert value not in printed
