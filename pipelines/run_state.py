"""The open run: a run records in the catalog that it has started changing tables, and clears the record
when it ends (succeeded, or failed cleanly with its tables consistent). A record still there when the next
run starts means the previous one died mid-way (SIGKILL, lost machine); the next run then resumes it.

Resuming rests on each layer's commit being atomic and carrying its run id and what it did (snapshot
properties): nothing committed is redone, everything not committed is redone by the ordinary incremental
logic, and what only the interrupted run knew is read back from its commits:

- `before`: each table's snapshot when the interrupted run started, so a failing quality gate still puts
  every table back to the state before *both* runs;
- the rows the interrupted run refined (silver commits' `refined`) and the gold intervals it rebuilt
  (gold commits' `as_of_first/as_of_last`), so the gate judges, and publish republishes, the combined work.

The record lives in the catalog (namespace properties), next to the tables it describes: the local and the
prod profile alike, with no driver-local state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from pipelines.commit_record import CommitRecord, Refined, history
from pipelines.io.lake import Lake

NAMESPACE = "pipeline_state"
RUN_IDS = "open.run_ids"
BEFORE = "open.before."  # + table identifier -> snapshot id ("none": the table did not exist)


@dataclass
class OpenRun:
    run_ids: List[str]  # the interrupted runs, oldest first, then the run resuming them
    before: Dict[str, Optional[int]]

    @property
    def interrupted(self) -> List[str]:
        return self.run_ids[:-1]


def _properties(lake: Lake) -> Dict[str, str]:
    lake.catalog.create_namespace_if_not_exists(NAMESPACE)
    return dict(lake.catalog.load_namespace_properties(NAMESPACE))


def begin(lake: Lake, run_id: str, tables: List[str]) -> OpenRun:
    """Open this run's record, taking over an interrupted run's record if one is open."""
    props = _properties(lake)
    if props.get(RUN_IDS):
        open_run = OpenRun(props[RUN_IDS].split(",") + [run_id],
                           {k[len(BEFORE):]: None if v == "none" else int(v) for k, v in props.items()
                            if k.startswith(BEFORE)})
        for identifier in tables:  # a table the interrupted run did not know: as it is now
            open_run.before.setdefault(identifier, lake.current_snapshot_id(identifier))
    else:
        open_run = OpenRun([run_id], {identifier: lake.current_snapshot_id(identifier) for identifier in tables})
    updates = {RUN_IDS: ",".join(open_run.run_ids),
               **{BEFORE + k: "none" if v is None else str(v) for k, v in open_run.before.items()}}
    lake.catalog.update_namespace_properties(NAMESPACE, updates=updates)
    return open_run


def open_run_ids(lake: Lake) -> List[str]:
    """The runs of a record left open (interrupted), oldest first; [] when none is."""
    value = _properties(lake).get(RUN_IDS)
    return value.split(",") if value else []


def end(lake: Lake) -> None:
    """Close the record: the tables are consistent (the run succeeded, or its gate rolled it back)."""
    props = _properties(lake)
    stale = [k for k in props if k == RUN_IDS or k.startswith(BEFORE)]
    if stale:
        lake.catalog.update_namespace_properties(NAMESPACE, removals=set(stale))


def commits_by(lake: Lake, identifier: str, run_ids: List[str]) -> List[CommitRecord]:
    """The records of the commits in the table's current history made by `run_ids`, oldest first."""
    wanted = set(run_ids)
    return [r for r in history(lake, identifier) if r.run_id in wanted] if wanted else []


def refined_by(lake: Lake, dataset: str, run_ids: List[str]) -> List[Tuple[Refined, List[str]]]:
    """What interrupted runs refined into silver.<dataset>: each silver commit's record and bronze runs."""
    return [(r.refined, list(r.bronze_runs)) for r in commits_by(lake, f"silver.{dataset}", run_ids)
            if r.refined is not None]
