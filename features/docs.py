"""The README's feature list and table of aggregation kinds, rendered from the declarations and the
registry of kinds (`python -m features.docs`, `python -m features.docs aggregations`)."""

from __future__ import annotations

import sys
from typing import Sequence

from features.aggregations import KINDS
from features.declarations import FeatureSet
from features.registry import feature_set

SHIPPED = ("user_spend_daily", "merchant_activity")


def render(sets: Sequence[FeatureSet]) -> str:
    lines = []
    for fs in sets:
        lines += [f"**{fs.name}** (entity `{fs.entity.name}` on `{fs.entity.join_key}`, source "
                  f"`silver.{fs.source_table}`): {fs.description}", "",
                  "| feature | dtype | description |", "|---|---|---|"]
        descriptions = fs.descriptions()
        lines += [f"| `{name}` | {dtype} | {descriptions[name]} |" for name, dtype in fs.feature_dtypes().items()]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def render_aggregations() -> str:
    lines = ["| aggregation | column | value | gold checks >= 0 |", "|---|---|---|---|"]
    for kind in KINDS.values():
        column = ("numeric" if kind.numeric_column else "any") if kind.needs_column else "none (optional)"
        lines.append(f"| `{kind.name}` | {column} | {kind.doc} | {'yes' if kind.non_negative else 'no'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_aggregations() if sys.argv[1:] == ["aggregations"] else render([feature_set(n) for n in SHIPPED]),
          end="")
