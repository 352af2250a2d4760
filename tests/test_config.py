"""Configuration is typed and validated at start-up; errors are one line naming the setting."""

from __future__ import annotations

import pytest

from pipelines.config import load_config
from pipelines.errors import ConfigError


def test_defaults_compose_with_absolute_paths(tmp_path):
    cfg = load_config([f"data_dir={tmp_path}"])
    assert cfg.catalog.uri == f"sqlite:///{tmp_path}/catalog.db"
    assert cfg.catalog.warehouse == f"file://{tmp_path}/warehouse"
    assert cfg.datasets["users"].uri == f"sqlite:///{tmp_path}/sample/users.db"
    assert cfg.cutoff == "2026-05-01T00:00:00Z"  # start 2026-01-01 + 120 days
    assert cfg.features.sets == ["user_spend_daily", "merchant_activity"]


def test_relative_data_dir_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config(["data_dir=rel"]).data_dir == str(tmp_path / "rel")


def test_cutoff_follows_the_sample_size():
    assert load_config(["sample.days=20"]).cutoff == "2026-01-21T00:00:00Z"


def test_feature_group_selects_sets():
    assert load_config(["features=merchant_activity"]).features.sets == ["merchant_activity"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("nope=1", "Key 'nope' not in 'PipelineConfig'"),
        ("datasets.transactions.sla.validity=1.5", "datasets.transactions.sla.validity=1.5 must be above 0 and at most 1"),
        ("datasets.users.volume.rows_per_day=0", "datasets.users.volume.rows_per_day=0.0 must be above 0"),
        ("datasets.users.quality.freshness={max_age_hours: 24}",
         "an override could not be applied (datasets.users.quality.freshness={max_age_hours: 24}: "
         "datasets.users.quality.freshness is null in the configuration"),
        ("quality.row_count.baseline=weekly", "quality.row_count.baseline='weekly' must be same_weekday or rolling"),
        ("quality.drift.baseline=weekly", "quality.drift.baseline='weekly' must be same_weekday or previous_snapshot"),
        ("ray.num_cpus=two", "Value 'two' of type 'str' could not be converted to Integer"),
        ("catalog=oracle", "Could not find 'catalog/oracle'"),
        ("cutoff=yesterday", "cutoff='yesterday' is not an ISO-8601 timestamp"),
        ("datasets.users.kind=ftp", "datasets.users.kind: 'ftp' must be one of ('files', 'sql')"),
        ("datasets.transactions.formats=[csv,xlsx]", "datasets.transactions.formats: unknown format(s) ['xlsx']"),
        ("datasets.transactions.key=[tx_id,nope]", "datasets.transactions.key: ['tx_id', 'nope'] must be one of its"),
        ("datasets.transactions.columns.amount.type=money", "datasets.transactions.columns.amount.type: unknown type"),
        ("datasets.transactions.columns.user_id.references=users.email",
         "references: 'users.email' must be the whole key of 'users'"),
        ("datasets.transactions.event_time=currency", "datasets.transactions.event_time: 'currency' must be one of its"),
        ("online_store.type=dynamo", "online_store.type='dynamo' must be sqlite or redis"),
        ("training_index.keep=0", "training_index.keep=0 must be at least 1 (no index at all: training_index.dir=null)"),
    ],
)
def test_bad_config_is_one_line(override, message):
    with pytest.raises(ConfigError) as raised:
        load_config([override])
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_feast_apply_fingerprint_follows_what_the_apply_derives_from(tmp_path):
    """A rerun skips Feast only while the declarations and the Feast-facing settings are those last applied."""
    import dataclasses

    from features.registry import feature_sets
    from serving import applied

    cfg = load_config([f"data_dir={tmp_path}"])
    sets = feature_sets(cfg.features.sets)
    assert not applied.is_current(cfg, sets)  # never applied here
    (tmp_path / "feast").mkdir()
    (tmp_path / "feast" / "registry.db").write_bytes(b"")
    applied.record(cfg, sets)
    assert applied.is_current(cfg, sets)
    assert not applied.is_current(cfg, sets[:1])  # a feature set fewer
    changed = dataclasses.replace(sets[0], description=sets[0].description + " (changed)")
    assert not applied.is_current(cfg, [changed] + sets[1:])
    assert not applied.is_current(load_config([f"data_dir={tmp_path}", "online_store.path=/elsewhere.db"]), sets)
    # a shared SQL registry can be changed by other clients: always applied, nothing recorded
    shared = load_config([f"data_dir={tmp_path}", "registry=sql"])
    applied.record(shared, sets)
    assert not applied.is_current(shared, sets) and applied.is_current(cfg, sets)
    (tmp_path / "feast" / "registry.db").unlink()  # the file registry is gone: apply again
    assert not applied.is_current(cfg, sets)
