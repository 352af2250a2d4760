"""The README's feature list, rendered from the declarations (`python -m features.docs`)."""

from __future__ import annotations

from typing import Sequence

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


if __name__ == "__main__":
    print(render([feature_set(n) for n in SHIPPED]), end="")
