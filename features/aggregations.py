"""The aggregation kinds a `WindowAggregation` may use: the one list the declarations' checks, the engine's
dispatch, the gold contract, the README's table and the tests' brute-force oracle all read.

Each kind states what it reads and what its result is, and defines its meaning as a plain reduction over
the events of one window (`reduce`), the slow, obviously correct form the engine's vectorised
implementation is tested against. `reduce` receives, in event order (timestamp, then the values of the
set's aggregated columns), one item per event of the window that passed the filter and, when the
declaration names a column, has a value in it:

- for a kind that `needs_column`: that column's value;
- otherwise: the event's age, the whole days from its (UTC) date to the as-of date (>= 1).

Adding a kind here without an implementation in `features.engine` makes the engine refuse it by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable, Dict, List, Optional, Sequence


@dataclass(frozen=True)
class AggregationKind:
    name: str
    needs_column: bool  # reduces the values of an event column (else only the events' presence and ages)
    numeric_column: bool  # that column must be numeric
    non_negative: bool  # the result is never below 0 (the gold contract checks it)
    doc: str  # one line, for the README
    reduce: Callable[[List[Any]], Any]  # the meaning, over one window's items (see the module docstring)


def _exact(value: Any) -> Decimal:
    """Decimal arithmetic, so a sum of money does not depend on the order it is added in."""
    return value if isinstance(value, Decimal) else Decimal(str(value))


def _sum(values: List[Any]) -> float:
    return float(sum((_exact(v) for v in values), Decimal(0)))


def _mean(values: List[Any]) -> Optional[float]:
    return _sum(values) / len(values) if values else None


def _min(values: List[Any]) -> Optional[float]:
    return float(min(_exact(v) for v in values)) if values else None


def _max(values: List[Any]) -> Optional[float]:
    return float(max(_exact(v) for v in values)) if values else None


def _last(values: List[Any]) -> Optional[float]:
    return float(_exact(values[-1])) if values else None


def _youngest(ages: List[int]) -> Optional[int]:
    return min(ages) if ages else None


_ALL: Sequence[AggregationKind] = (
    AggregationKind("sum", True, True, False, "Sum of the values, 0 when there is none", _sum),
    AggregationKind("count", False, False, True,
                    "Number of events (with a value in the column, if one is named)", len),
    AggregationKind("mean", True, True, False, "Mean of the values, null when there is none", _mean),
    AggregationKind("min", True, True, False, "Smallest value, null when there is none", _min),
    AggregationKind("max", True, True, False, "Largest value, null when there is none", _max),
    AggregationKind("count_distinct", True, False, True, "Number of distinct values",
                    lambda values: len(set(values))),
    AggregationKind("last", True, True, False,
                    "Value of the latest event, null when there is none (equal timestamps: ordered by the "
                    "aggregated columns' values)", _last),
    AggregationKind("days_since_last", False, False, True,
                    "Whole days from the date of the latest event to the as-of date (>= 1), null when there "
                    "is none", _youngest),
)

KINDS: Dict[str, AggregationKind] = {kind.name: kind for kind in _ALL}
