"""`medallion init DIR` writes a project that runs as it is (README "Bring your own data"), and the generic
code knows no dataset or feature set by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MEDALLION = Path(sys.executable).parent / "medallion"
# the shipped sample project's names: only examples/, tests/, docs and benchmarks may say them
SAMPLE_NAMES = ["transactions", "users", "user_spend_daily", "merchant_activity", "tx_id", "user_id"]


def test_the_generic_code_names_no_dataset_or_feature_set():
    listed = subprocess.run(["git", "ls-files", "pipelines", "serving"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.split()
    untracked = subprocess.run(["git", "ls-files", "--others", "--exclude-standard", "pipelines", "serving"],
                               cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    found = []
    for path in sorted(set(listed + untracked)):
        if not path.endswith(".py") or not (ROOT / path).exists():
            continue
        for number, line in enumerate((ROOT / path).read_text().splitlines(), 1):
            found += [f"{path}:{number}: {name}" for name in SAMPLE_NAMES if name in line.lower()]
    assert found == []


def _medallion(*args: str, cwd: Path) -> dict:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PIPELINE_PII_KEY": "test-only-pii-key"}
    env.pop("MEDALLION_PROJECT", None)
    env.pop("PIPELINE_DATA_DIR", None)
    out = subprocess.run([str(MEDALLION), *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_init_refuses_an_existing_project(tmp_path):
    from pipelines.errors import ConfigError
    from pipelines.project_template import write_project

    write_project(tmp_path / "p")
    with pytest.raises(ConfigError, match="already holds a project"):
        write_project(tmp_path / "p")


@pytest.mark.e2e
def test_an_initialised_project_runs_as_it_is(tmp_path):
    from pyiceberg.catalog import load_catalog

    created = _medallion("init", str(tmp_path / "shop"), cwd=tmp_path)
    project = Path(created["project"])
    assert sorted(p.relative_to(project).as_posix() for p in (project / "conf").rglob("*.yaml")) == [
        "conf/dataset/customers.yaml", "conf/dataset/orders.yaml", "conf/project.yaml"]
    summary = _medallion("run", "--project", str(project), cwd=tmp_path)  # from another directory
    # the 3 bad rows are quarantined: succeeded with rejections, exit code 0 (rows, not files; _medallion checks)
    assert summary["status"] == "succeeded_with_rejections" and summary["data_dir"] == str(project / "data")
    assert (summary["rejections"], summary["exit_code"]) == ({"files": 0, "rows": 3}, 0)
    # by hand: 7 days x 3 orders plus 3 bad rows on day 4; 3 customers
    assert summary["counts"]["orders.bronze_rows_refined"] == 24
    assert summary["counts"]["orders.silver_rows_added"] == 21
    assert summary["quarantined"] == {"customers": 0, "orders": 3}
    catalog = load_catalog(summary["catalog"]["name"], **summary["catalog"]["properties"])
    reasons = sorted(catalog.load_table("quarantine.orders").scan().to_arrow().column("_failed_rules").to_pylist())
    assert reasons == ["amount_in_range", "customer_id_known", "customer_id_present"]
    gold = catalog.load_table("gold.customer_orders_daily").scan().to_pandas()
    # customer 1 orders 10.50 + 3 * day at 09:15 each day from 2026-01-01; as of 2026-01-08 the last 7 days
    # hold 2026-01-01 .. 2026-01-07: sum(10.5 + 3 d for d in 0..6) = 136.5, 7 orders
    last = gold[(gold["customer_id"] == 1) & (gold["as_of"] == gold["as_of"].max())].iloc[0]
    assert (last["order_amount_7d"], last["orders_7d"], last["country"]) == (136.5, 7, "GB")
    assert _medallion("run", "--project", str(project), cwd=tmp_path)["new_data"] is False
