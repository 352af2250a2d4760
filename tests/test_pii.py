"""PII tokenization keys and tokens: stable, keyed, and never without a key in production."""

from __future__ import annotations

import hashlib
import hmac

import pandas as pd
import pytest

from pipelines.errors import ConfigError
from pipelines.pii import load_key, tokenize


def test_prod_refuses_to_start_without_the_key(tmp_path, monkeypatch):
    monkeypatch.delenv("PIPELINE_PII_KEY", raising=False)
    with pytest.raises(ConfigError) as stopped:
        load_key("PIPELINE_PII_KEY", "prod", tmp_path, print)
    assert str(stopped.value) == "environment variable PIPELINE_PII_KEY (the PII tokenization key) is not set"
    assert list(tmp_path.iterdir()) == []  # no key was made up


def test_local_generates_one_key_once_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.delenv("PIPELINE_PII_KEY", raising=False)
    warnings = []
    first = load_key("PIPELINE_PII_KEY", "local", tmp_path, lambda *a, **k: warnings.append(k))
    second = load_key("PIPELINE_PII_KEY", "local", tmp_path, lambda *a, **k: warnings.append(k))
    assert first == second and len(first) == 64 and len(warnings) == 1
    assert (tmp_path / "secrets" / "pii.key").stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("PIPELINE_PII_KEY", "from-env")
    assert load_key("PIPELINE_PII_KEY", "prod", tmp_path, print) == b"from-env"


def test_tokens_are_hmac_sha256_stable_and_keyed():
    values = pd.Series(["anna@example.org", None, "anna@example.org", "ben@example.org"])
    tokens = tokenize(values, b"k1")
    expected = hmac.new(b"k1", b"anna@example.org", hashlib.sha256).hexdigest()
    assert tokens.tolist() == [expected, None, expected, hmac.new(b"k1", b"ben@example.org", hashlib.sha256).hexdigest()]
    assert tokenize(values, b"k2")[0] != expected


def test_protect_tokenizes_or_drops_each_declared_column_and_leaves_the_rest():
    import pyarrow as pa

    from pipelines.pii import protect

    table = pa.table({"email": ["a@x.org", None], "born": pa.array([19, 20], pa.int64()), "city": ["Oslo", "Rome"]})
    got = protect(table, {"email": "hmac", "born": "drop"}, b"k")
    expected = hmac.new(b"k", b"a@x.org", "sha256").hexdigest()  # by hand, from the standard library
    assert got.column("email").to_pylist() == [expected, None]
    assert got.column("born").to_pylist() == [None, None] and got.schema.field("born").type == pa.int64()
    assert got.column("city").to_pylist() == ["Oslo", "Rome"]
