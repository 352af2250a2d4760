"""The gate learns only from runs that passed every check. Twenty days delivered one run at a time, a few
small odd files between them (their row count let through as `warn`): a normal day still passes, and a
real drop of half the rows still fails. Judged the old way (every run whose gate passed is history), the
small files' rows per file become the norm and the normal day is blocked."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
SAMPLE = ["sample.n_transactions=4000", "sample.n_users=60", "sample.days=24", "sample.n_merchants=20",
          "sample.dirt_fraction=0.01", "features.sets=[]"]
HEADER = "tx_id,user_id,merchant_id,amount,currency,channel,ts"


def test_small_files_let_through_by_warn_do_not_teach_the_row_count(tmp_path, ray_session):
    from examples.sample.generate import generate
    from pipelines.config import load_config
    from pipelines.quality.gate import QualityGateError
    from pipelines.run import run

    staging, landing = tmp_path / "staging", tmp_path / "landing"
    landing.mkdir()
    base = [f"data_dir={tmp_path / 'data'}", *SAMPLE, f"sample.output_dir={staging}",
            f"datasets.transactions.path={landing}"]
    generate(load_config(base).sample)
    days = sorted((staging / "transactions").iterdir())

    def deliver(path: Path, day: dt.date, *overrides: str) -> dict:
        """One run after `path` arrived, on the next morning (its logical date)."""
        if path.parent != landing:
            shutil.move(str(path), landing / path.name)
        cutoff = f"cutoff={day + dt.timedelta(days=1)}T00:00:00Z"
        return run(load_config([*base, cutoff, *overrides]))

    def day_of(path: Path) -> dt.date:
        return dt.date.fromisoformat(path.name.split(".")[0])

    def small_file(name: str, day: dt.date) -> Path:
        path = landing / name
        path.write_text("\n".join([HEADER] + [f"{name}-{i},{i + 1},1,5.00,EUR,web,{day}T1{i}:00:00Z"
                                              for i in range(3)]) + "\n")
        return path

    for path in days[:15]:  # fifteen normal days: the history
        summary = deliver(path, day_of(path))
        assert summary["quality"]["passed"] and summary["quality"]["failed_checks"] == [], path.name
    last = day_of(days[14])
    for i in range(3):  # odd small files, each in a run of its own, let through as warn
        odd = deliver(small_file(f"odd{i}.csv", last), last, "quality.row_count.severity=warn")
        assert [c.split("=")[0] for c in odd["quality"]["failed_checks"]] == ["row_count.transactions"]
    normal = deliver(days[15], day_of(days[15]))  # judged against the normal days only
    assert normal["quality"]["passed"] and normal["quality"]["failed_checks"] == []

    for path in days[16:20]:
        assert deliver(path, day_of(path))["quality"]["failed_checks"] == []
    half = days[20]  # a real incident: half of a day's rows did not arrive
    _keep_half(half)
    with pytest.raises(QualityGateError, match=r"row_count\.transactions="):
        deliver(half, day_of(half))


def _keep_half(path: Path) -> None:
    import pyarrow.parquet as pq

    if path.suffix == ".parquet":
        table = pq.read_table(path)
        pq.write_table(table.slice(0, table.num_rows // 2), path)
    else:
        lines = path.read_text().splitlines()
        path.write_text("\n".join(lines[: 1 + (len(lines) - 1) // 2]) + "\n")
