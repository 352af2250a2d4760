"""The prod profile against real servers: the local stand-in stack of scripts/prod_stack.sh.

The stack is used when it is up (`make stack-up`, or .ci/run), and otherwise started here and stopped at
the end of the session. Every pipeline run is a `medallion run profile=prod` subprocess with the stack's
environment, exactly as a user would start it: the test process never joins the Ray cluster itself, so
it can share the session with the local-profile tests (which start their own Ray runtime).

Each session works under its own names (catalog, object-store prefix, database schema), so sessions
against one long-lived stack never see each other's tables.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import pytest

from tests.conftest import BOUNDARY_LINES, SMALL

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "scripts" / "prod_stack.sh"
STACK_DIR = Path(os.environ.get("MEDALLION_STACK_DIR", "/tmp/medallion-stack"))  # its pid files, logs and env
USERS_QUERY = "SELECT user_id, email, full_name, phone, birth_date, country, signup_ts FROM {table}"


def _read_env_file(path: Path) -> Dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            env[key] = value
    return env


OWN_SERVICES = ("s3", "mlflow", "ray-head", "ray-worker-1", "ray-worker-2")  # PostgreSQL and Redis are shared


@pytest.fixture(scope="session")
def stack():
    """The stack's environment (RAY_ADDRESS, AWS_*, MEDALLION_*, MLFLOW_TRACKING_URI, ...)."""
    status = subprocess.run([str(STACK), "status"], capture_output=True, text=True)
    # down at the end only if none of the stack's own services ran before: a stack the user or CI started
    # (even with a node down) stays up
    own = [line for line in status.stdout.splitlines() if line.split(":")[0] in OWN_SERVICES]
    started_here = all(line.endswith("stopped") for line in own)
    if status.returncode != 0:
        up = subprocess.run([str(STACK), "up"], capture_output=True, text=True)
        assert up.returncode == 0, f"could not start the prod stand-in stack: {up.stderr[-2000:]}"
    env = _read_env_file(STACK_DIR / "env")
    yield env
    if started_here:
        subprocess.run([str(STACK), "down"], capture_output=True, text=True)


@dataclass
class ProdSetup:
    env: Dict[str, str]  # the process environment of a prod run
    session: str  # unique per test session: catalog names, object-store prefix, database schema
    sample_dir: Path

    def overrides(self, name: str, data_dir: Path) -> List[str]:
        """A prod run of the small standard case under catalog `<session>_<name>` with its own warehouse."""
        bucket = self.env["MEDALLION_BUCKET"]
        return ["profile=prod", f"data_dir={data_dir}", *SMALL,
                f"catalog.name={self.session}_{name}",
                f"catalog.warehouse=s3://{bucket}/{self.session}/{name}/warehouse",
                f"datasets.transactions.path=s3://{bucket}/{self.session}/landing/transactions",
                f"datasets.users.uri={self.env['MEDALLION_USERS_DB_URI']}",
                f"datasets.users.query='{USERS_QUERY.format(table=self.session + '.users')}'"]

    def run(self, name: str, data_dir: Path, *extra: str, env: Dict[str, str] | None = None):
        return subprocess.run([sys.executable, "-m", "pipelines", "run", *self.overrides(name, data_dir), *extra],
                              capture_output=True, text=True, cwd=ROOT, env=env or self.env)

    def popen(self, name: str, data_dir: Path) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "pipelines", "run", *self.overrides(name, data_dir)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=self.env)


def summary_of(out) -> dict:
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def prod(stack, tmp_path_factory) -> ProdSetup:
    """The small standard case (same sample and boundary events as the local `pipeline_run`), staged where a
    prod run reads it: transaction files in the object store, users in the PostgreSQL application database."""
    from examples.sample.generate import generate
    from tests.conftest import small_config

    session = f"t{uuid.uuid4().hex[:10]}"
    local = tmp_path_factory.mktemp("prod-sample")
    cfg = small_config(local)
    generate(cfg.sample)
    header = "tx_id,user_id,merchant_id,amount,currency,channel,ts"
    (Path(cfg.sample['output_dir']) / "transactions" / "boundary.csv").write_text(
        "\n".join([header, *BOUNDARY_LINES]) + "\n")
    env = {**os.environ, **stack}
    staged = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "stage_sample.py"), cfg.sample['output_dir'],
         f"s3://{stack['MEDALLION_BUCKET']}/{session}/landing", stack["MEDALLION_USERS_DB_URI"], f"{session}.users"],
        capture_output=True, text=True, cwd=ROOT, env=env)
    assert staged.returncode == 0, staged.stderr[-2000:]
    return ProdSetup(env, session, Path(cfg.sample['output_dir']))


def prod_catalog(summary: dict, stack: Dict[str, str]):
    """The run's catalog as any pyiceberg client opens it (the test process holds no AWS_* variables, so the
    stand-in's keys are passed as properties here; the pipeline itself only reads them from its environment)."""
    from pyiceberg.catalog import load_catalog

    return load_catalog(summary["catalog"]["name"], **summary["catalog"]["properties"],
                        **{"s3.access-key-id": stack["AWS_ACCESS_KEY_ID"],
                           "s3.secret-access-key": stack["AWS_SECRET_ACCESS_KEY"]})


def gold_frame(catalog, name: str):
    from features.registry import feature_set

    fs = feature_set(name)
    frame = catalog.load_table(f"gold.{name}").scan().to_pandas()
    return frame.sort_values([fs.entity.join_key, fs.as_of_column]).reset_index(drop=True)


def assert_gold_equals_local(summary: dict, stack: Dict[str, str], local_summary: dict) -> None:
    """Row for row, column for column, bit for bit: the prod run's gold is the local profile's gold."""
    import pandas as pd
    from pyiceberg.catalog import load_catalog

    local = load_catalog(local_summary["catalog"]["name"], **local_summary["catalog"]["properties"])
    remote = prod_catalog(summary, stack)
    for name in ("user_spend_daily", "merchant_activity"):
        want, got = gold_frame(local, name), gold_frame(remote, name)
        assert len(got) == len(want) > 0, name
        pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert summary["gold_digests"] == local_summary["gold_digests"]
