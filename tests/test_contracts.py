"""Every table of a real run satisfies its pandera contract; a broken row fails the named check."""

from __future__ import annotations

import pandera.errors
import pytest
from pyiceberg.catalog import load_catalog

from validation import bronze, quarantine
from validation import contract as contracts


def rules_of(source):
    return contracts.build(source.name, source).rules


def _frames(pipeline_run, layer: str):
    summary, cfg = pipeline_run["summary"], pipeline_run["cfg"]
    catalog = load_catalog(summary["catalog"]["name"], **summary["catalog"]["properties"])
    for source in cfg.datasets.values():
        yield source, catalog.load_table(f"{layer}.{source.name}").scan().to_pandas()


@pytest.mark.e2e
def test_bronze_and_quarantine_tables_satisfy_their_contracts(pipeline_run):
    for source, frame in _frames(pipeline_run, "bronze"):
        bronze.contract(source.column_names).validate(frame, lazy=True)
    checked = 0
    for source, frame in _frames(pipeline_run, "quarantine"):
        quarantine.contract(source.column_names, rules_of(source)).validate(frame, lazy=True)
        checked += len(frame)
    assert checked > 0


@pytest.mark.e2e
def test_a_broken_row_fails_the_named_check(pipeline_run):
    source, frame = next(_frames(pipeline_run, "quarantine"))
    broken = frame.head(3).copy()
    broken.loc[broken.index[0], "_row_hash"] = "not-a-hash"
    broken.loc[broken.index[1], "_failed_rules"] = "amount_in_range;made_up_rule"
    with pytest.raises(pandera.errors.SchemaErrors) as failed:
        quarantine.contract(source.column_names, rules_of(source)).validate(broken, lazy=True)
    assert set(failed.value.failure_cases["check"]) == {"row_hash_hex", "failed_rules_known"}
