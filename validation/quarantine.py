"""Contract of a quarantine table: a bronze row plus the reasons it was held back, each a known rule."""

from __future__ import annotations

from typing import Sequence

import pandera.pandas as pa

from validation import bronze
from validation.rules import RULE_SEPARATOR

SCHEMA_REASONS = ("unexpected_column:", "missing_column:")  # from the discard_row schema policy


def contract(columns: list[str], rules: Sequence[str]) -> pa.DataFrameSchema:
    known = set(rules)

    def reasons_known(values):
        def ok(text: object) -> bool:
            parts = str(text).split(RULE_SEPARATOR) if text else []
            return bool(parts) and all(p in known or p.startswith(SCHEMA_REASONS) for p in parts)

        return values.map(ok)

    base = bronze.contract(columns)
    return base.add_columns({"_failed_rules": pa.Column(nullable=False, checks=pa.Check(
        reasons_known, element_wise=False, name="failed_rules_known"))})
