"""Feature sets by name. A new feature set is a new module here with a `FEATURE_SET` attribute:
selecting it (`features.sets=[...]`) is all the pipeline and serving code need."""

from __future__ import annotations

import importlib
from typing import List, Sequence

from features.declarations import FeatureDeclarationError, FeatureSet, validate_all


def feature_set(name: str) -> FeatureSet:
    try:
        module = importlib.import_module(f"features.{name}")
    except ModuleNotFoundError:
        raise FeatureDeclarationError(f"unknown feature set {name!r}: no module features/{name}.py") from None
    declared = getattr(module, "FEATURE_SET", None)
    if not isinstance(declared, FeatureSet):
        raise FeatureDeclarationError(f"features/{name}.py does not define FEATURE_SET = FeatureSet(...)")
    return declared


def feature_sets(names: Sequence[str]) -> List[FeatureSet]:
    sets = [feature_set(n) for n in names]
    validate_all(sets)
    return sets
