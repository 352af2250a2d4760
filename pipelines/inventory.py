"""The source inventory (`medallion sources`): every declared dataset with its owner, kind, expected volume
and promises (SLAs), beside what the lake measures now: last arrival, newest event, volume, completeness,
validity, latency, and each SLA met or breached since when.

Everything is read from table metadata and commit records (snapshot summaries, column bounds, partition
counts) and the landed files' modification times: no data file is read, so it is cheap enough to run as a
probe between pipeline runs.

The SLAs (each only where declared):
- freshness: the newest event is at most `quality.freshness.max_age_hours` old at `now`; breached since the
  newest event plus that age (nothing arrives: the breach starts by itself, no run needed to see it);
- latency: each ingested file reached gold (silver, for a dataset no feature set reads) within
  `sla.latency_minutes` of landing (its modification time); the last ingest's worst file is shown;
- completeness: in the last refined batch, each declared column's share of values present is at least its
  threshold (`quality.completeness`); validity: the share of refined rows that were valid (not quarantined)
  is at least `sla.validity`. Breached since the first of the consecutive batches that breached it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from pipelines.commit_record import CommitRecord
from pipelines.config import DatasetConfig, PipelineConfig
from pipelines.io.lake import Lake

DAY = dt.timedelta(days=1)
VOLUME_DAYS = 7  # measured volume: the last week (a weekly rhythm averages out)


@dataclass(frozen=True)
class SlaState:
    name: str  # freshness | latency | completeness | validity
    target: str
    measured: Optional[float]
    met: Optional[bool]  # None: nothing measured yet
    since: Optional[str]  # when the current breach began (ISO), None when met
    detail: str = ""


Commits = List[Tuple[dt.datetime, CommitRecord]]


def _commits(lake: Lake, identifier: str) -> Commits:
    return [(at, CommitRecord.read(props)) for at, props in lake.commits(identifier)]


def _iso(value: Optional[dt.datetime]) -> Optional[str]:
    return value.isoformat() if value is not None else None


def _rows_per_day(lake: Lake, identifier: str, event_time: str, last_day: dt.date) -> float:
    """Mean rows per event day over the VOLUME_DAYS days up to `last_day`, or over the days since the
    first event day when the source is younger than that (partition metadata)."""
    by_day = lake.rows_by_day(identifier, event_time)
    first = max(last_day - (VOLUME_DAYS - 1) * DAY, min(by_day, default=last_day))
    return sum(rows for day, rows in by_day.items() if first <= day <= last_day) / ((last_day - first).days + 1)


def _days(ingests: Sequence[Tuple[dt.datetime, Any]]) -> int:
    """The days the last week of ingests spans: VOLUME_DAYS, or fewer since a young source's first ingest."""
    return max(1, min(VOLUME_DAYS, (ingests[-1][0].date() - ingests[0][0].date()).days + 1))


def _landed(location: Optional[str], uris: Sequence[str]) -> List[dt.datetime]:
    """Modification times of the files still where they landed (a file moved away has none): one
    filesystem for the source's location, one metadata call for all the files."""
    from pyarrow import fs as pafs

    from pipelines.io.sources import _filesystem

    if not location or not uris:
        return []
    try:
        filesystem, _ = _filesystem(location)
        infos = filesystem.get_file_info([u.split("://", 1)[1] if "://" in u else u for u in uris])
    except (OSError, ValueError):
        return []
    return [i.mtime if i.mtime.tzinfo else i.mtime.replace(tzinfo=dt.timezone.utc)
            for i in infos if i.type == pafs.FileType.File and i.mtime is not None]


def _breach_since(history: List[Tuple[dt.datetime, bool]]) -> Optional[dt.datetime]:
    """The time of the first of the trailing run of breaches (history oldest first; True = met)."""
    since = None
    for at, met in reversed(history):
        if met:
            break
        since = at
    return since


def _freshness(ds: DatasetConfig, newest: Optional[dt.datetime], now: dt.datetime) -> Optional[SlaState]:
    sla = ds.quality.freshness
    if sla is None or not ds.event_time:
        return None
    target = f"newest event <= {sla.max_age_hours:g} h old"
    if newest is None:
        return SlaState("freshness", target, None, None, None, "no events yet")
    age = (now - newest).total_seconds() / 3600
    limit = newest + dt.timedelta(hours=sla.max_age_hours)
    met = age <= sla.max_age_hours
    return SlaState("freshness", target, round(age, 3), met, None if met else limit.isoformat(),
                    f"newest event {newest.isoformat()}")


def _quality(cfg: PipelineConfig, ds: DatasetConfig, silver: Commits) -> List[SlaState]:
    """Completeness and validity of each refined batch (silver commit records), the last one shown."""
    batches = [(at, c.refined) for at, c in silver if c.refined is not None and c.refined.rows_in]
    out = []
    thresholds = {c: ds.quality.completeness.get(c, cfg.quality.completeness.threshold) for c in ds.column_names}

    def completeness(refined) -> Tuple[float, str]:
        shares = {c: refined.present.get(c, 0) / refined.rows_in for c in thresholds if c in refined.present}
        worst = min(shares, key=lambda c: shares[c] - thresholds[c]) if shares else None
        return (shares[worst], worst) if worst else (1.0, "")

    target = "each column >= " + (f"{cfg.quality.completeness.threshold:g}" if len(set(thresholds.values())) <= 1
                                  else "its threshold")
    if batches:
        history = [(at, all(r.present.get(c, 0) / r.rows_in >= t for c, t in thresholds.items()
                            if c in r.present)) for at, r in batches]
        value, column = completeness(batches[-1][1])
        since = _breach_since(history)
        out.append(SlaState("completeness", target, round(value, 6), history[-1][1], _iso(since),
                            f"lowest: {column}" if column else ""))
    else:
        out.append(SlaState("completeness", target, None, None, None, "nothing refined yet"))
    if ds.sla.validity is not None:
        target = f"valid share >= {ds.sla.validity:g}"
        if batches:
            shares = [(at, r.valid / (r.valid + r.quarantined) if r.valid + r.quarantined else 1.0) for at, r in batches]
            history = [(at, share >= ds.sla.validity) for at, share in shares]
            last = batches[-1][1]
            out.append(SlaState("validity", target, round(shares[-1][1], 6), history[-1][1],
                                _iso(_breach_since(history)),
                                f"{last.valid} valid, {last.quarantined} quarantined in the last batch"))
        else:
            out.append(SlaState("validity", target, None, None, None, "nothing refined yet"))
    return out


def _latency(ds: DatasetConfig, ingests: Commits, reached: Commits, now: dt.datetime,
             downstream: str) -> Optional[SlaState]:
    """Per ingest (a bronze run): its earliest-landed file to the first commit downstream reflecting it."""
    if ds.sla.latency_minutes is None:
        return None
    target = f"landed -> {downstream} <= {ds.sla.latency_minutes:g} min"
    limit = dt.timedelta(minutes=ds.sla.latency_minutes)
    first_reached: Dict[str, dt.datetime] = {}  # bronze run -> the first downstream commit reflecting it
    for t, commit in reached:
        for run in commit.bronze_runs:
            first_reached.setdefault(run, t)
    history: List[Tuple[dt.datetime, bool]] = []  # newest first, back to the newest ingest that met it
    last: Optional[Tuple[float, bool]] = None
    for at, ingest in reversed(ingests):
        landed = _landed(ds.path, [u.uri for u in ingest.units]) or [at]  # moved away: from its ingest
        first = min(landed)
        done = first_reached.get(ingest.run_id)
        took = (done or now) - first
        history.append((first + limit, took <= limit))
        if last is None:
            last = (took.total_seconds() / 60, done is not None)
        if took <= limit:  # the breach (if any) began after this one: older ingests change nothing
            break
    if last is None:
        return SlaState("latency", target, None, None, None, "nothing ingested yet")
    minutes, done = last
    history.reverse()
    return SlaState("latency", target, round(minutes, 3), history[-1][1], _iso(_breach_since(history)),
                    f"last ingest {'reached' if done else 'has not yet reached'} {downstream}")


def source_state(cfg: PipelineConfig, lake: Lake, ds: DatasetConfig, gold_tables: Sequence[str],
                 now: dt.datetime) -> Dict[str, Any]:
    name = ds.name
    bronze = _commits(lake, f"bronze.{name}")
    silver = _commits(lake, f"silver.{name}")
    ingests = [(at, c) for at, c in bronze if c.units]
    newest = lake.upper_bound(f"silver.{name}", ds.event_time) if ds.event_time else None
    week = [(at, c) for at, c in ingests if ingests and at > ingests[-1][0] - VOLUME_DAYS * DAY]
    volume: Dict[str, Any] = {"expected_rows_per_day": ds.volume.rows_per_day,
                              "expected_files_per_day": ds.volume.files_per_day,
                              "files_per_day": round(sum(len(c.units) for _, c in week) / _days(ingests), 3)
                              if week else None}
    if newest is not None:
        volume["rows_per_day"] = round(_rows_per_day(lake, f"silver.{name}", ds.event_time, newest.date()), 3)
    else:
        volume["rows_per_day"] = None
    if volume["rows_per_day"] is not None and ds.volume.rows_per_day:
        volume["ratio"] = round(volume["rows_per_day"] / ds.volume.rows_per_day, 3)
    reached = [item for t in gold_tables for item in _commits(lake, t)] or silver
    reached.sort(key=lambda item: item[0])
    slas = [s for s in (_freshness(ds, newest, now),
                        _latency(ds, ingests, reached, now, "gold" if gold_tables else "silver"),
                        *_quality(cfg, ds, silver)) if s is not None]
    return {
        "dataset": name, "description": ds.description, "owner": ds.owner or None, "kind": ds.kind,
        "location": ds.path if ds.kind == "files" else _redacted(ds.uri),
        "last_arrival": _iso(ingests[-1][0]) if ingests else None,
        "files_ingested": sum(len(c.units) for _, c in ingests),
        "newest_event": _iso(newest),
        "volume": volume,
        "slas": [asdict(s) for s in slas],
        "breached": [s.name for s in slas if s.met is False],
    }


def _redacted(uri: Optional[str]) -> Optional[str]:
    from pipelines.io.sources import redact_uri

    return redact_uri(uri) if uri else None


def inventory(cfg: PipelineConfig, lake: Lake, now: Optional[dt.datetime] = None) -> List[Dict[str, Any]]:
    """Every declared dataset's entry (see the module docstring), measured at `now` (default: the clock)."""
    from features.registry import feature_sets

    now = now or dt.datetime.now(dt.timezone.utc)
    sets = feature_sets(cfg.features.sets, cfg.project)
    return [source_state(cfg, lake, ds, [f"gold.{fs.name}" for fs in sets if fs.source_table == name], now)
            for name, ds in cfg.datasets.items()]


def render(entries: List[Dict[str, Any]]) -> str:
    """The inventory as a Markdown table (the README's source section is this, for the sample)."""
    lines = ["| dataset | owner | kind | expected volume | SLAs | last arrival | newest event | state |",
             "|---|---|---|---|---|---|---|---|"]
    for e in entries:
        v = e["volume"]
        expected = ", ".join(x for x in (f"{v['expected_rows_per_day']:g} rows/day" if v["expected_rows_per_day"]
                                         else "", f"{v['expected_files_per_day']:g} files/day"
                                         if v["expected_files_per_day"] else "") if x) or "-"
        slas = "; ".join(s["target"] if s["name"] != "completeness" else f"completeness {s['target']}"
                         for s in e["slas"]) or "-"
        state = "; ".join(f"{s['name']} {'met' if s['met'] else 'breached since ' + str(s['since'])}"
                          for s in e["slas"] if s["met"] is not None) or "not measured yet"
        lines.append(f"| `{e['dataset']}` | {e['owner'] or '-'} | {e['kind']} | {expected} | {slas} | "
                     f"{e['last_arrival'] or '-'} | {e['newest_event'] or '-'} | {state} |")
    return "\n".join(lines) + "\n"


def render_declared(cfg: PipelineConfig) -> str:
    """What is declared only (no measured state): the README's source section."""
    entries = []
    for name, ds in cfg.datasets.items():
        slas = []
        if ds.quality.freshness is not None and ds.event_time:
            slas.append(f"freshness <= {ds.quality.freshness.max_age_hours:g} h")
        if ds.sla.latency_minutes is not None:
            slas.append(f"latency <= {ds.sla.latency_minutes:g} min")
        thresholds = {ds.quality.completeness.get(c, cfg.quality.completeness.threshold) for c in ds.column_names}
        slas.append(f"completeness >= {min(thresholds):g}")
        if ds.sla.validity is not None:
            slas.append(f"validity >= {ds.sla.validity:g}")
        volume = ", ".join(x for x in (f"{ds.volume.rows_per_day:g} rows/day" if ds.volume.rows_per_day else "",
                                       f"{ds.volume.files_per_day:g} files/day" if ds.volume.files_per_day else "")
                           if x) or "-"
        entries.append(f"| `{name}` | {ds.description} | {ds.owner or '-'} | {ds.kind} | {volume} | "
                       f"{'; '.join(slas)} |")
    return "\n".join(["| dataset | description | owner | kind | expected volume | SLAs |",
                      "|---|---|---|---|---|---|", *entries]) + "\n"


if __name__ == "__main__":  # the README's source section, from the sample's declarations
    from pipelines.config import load_config

    print(render_declared(load_config([])), end="")
