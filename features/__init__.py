"""Feature declarations and the engine that computes them, on plain pandas/Arrow frames.

Nothing here imports ray, pyiceberg, feast or mlflow: a feature set is declared once
(`features.declarations`) and runs on a five-row frame in a test exactly as it runs inside a Ray task.
"""

from features.declarations import (
    Attribute,
    Derived,
    Entity,
    FeatureDeclarationError,
    FeatureSet,
    WindowAggregation,
)
from features.registry import feature_set, feature_sets

__all__ = [
    "Attribute",
    "Derived",
    "Entity",
    "FeatureDeclarationError",
    "FeatureSet",
    "WindowAggregation",
    "feature_set",
    "feature_sets",
]
