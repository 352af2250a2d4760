"""A project the pipeline has never seen, and an independent oracle of what the pipeline must make of it.

`build_project(root)` writes, under `root` (a temporary directory outside the repository):

    root/conf/project.yaml            cutoff + the quality gate relaxed to warnings (few rows, few files)
    root/conf/dataset/readings.yaml   sensor readings: CSV day files, composite key, event time reading_time
    root/conf/dataset/sensors.yaml    the sensors (a dimension: no event time, key sensor_id)
    root/features/sensor_daily.py     FEATURE_SET over readings, attributes from sensors
    root/landing/readings/*.csv       5 day files (2026-03-01 .. 03-05), seeded, with planted dirt
    root/landing/sensors/*.csv        one file of sensors
    root/data/                        the run's data_dir (warehouse, MLflow, Feast), written by the pipeline

`add_batch(project)` delivers the next batch: a new day file (2026-03-06) holding a re-delivered key of an
earlier day, a late event of an earlier day, an event close to the cutoff written with an offset, and a
sensors file adding one sensor and updating one.

The oracle restates the rules of the dataset declaration in plain Python (re, csv, decimal, datetime and
pandas' row hash); it imports nothing from pipelines/ or validation/. The gold side is tests/oracle.py.
Every file of one batch is ingested by the same run: batch number = ingest run order.
"""

from __future__ import annotations

import csv
import datetime as dt
import importlib.util
import itertools
import random
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pandas as pd
import yaml

UTC = dt.timezone.utc
CUTOFF = "2026-03-08T00:00:00Z"
FIRST_DAY = dt.date(2026, 3, 1)
DAYS = 5  # batch 0: 2026-03-01 .. 2026-03-05; batch 1 adds 2026-03-06
SITES = ["north", "south", "east", "west"]
NULL_TOKENS = ["NA", ""]

READINGS_COLUMNS = {  # in source order
    "site": {"type": "string", "required": True},
    "sensor_id": {"type": "integer", "required": True},
    "reading_time": {"type": "timestamp", "required": True, "not_after_cutoff": True},
    "temperature": {"type": "decimal(6,2)", "required": True, "range": {"min": -60, "max": 60}},
    "humidity": {"type": "float"},
    "status": {"type": "string", "allowed": ["ok", "degraded"]},
}
SENSORS_COLUMNS = {
    "sensor_id": {"type": "integer", "required": True},
    "model": {"type": "string"},
    "installed_at": {"type": "timestamp"},
}

FEATURE_MODULE = '''\
"""Daily readings per sensor: what a maintenance model reads about a sensor as of a day."""

from features.declarations import Attribute, Entity, FeatureSet, WindowAggregation

sensor = Entity(name="sensor", join_key="sensor_id", dtype="int64", description="A field sensor")

FEATURE_SET = FeatureSet(
    name="sensor_daily",
    entity=sensor,
    source_table="readings",
    timestamp_column="reading_time",
    entity_table="sensors",
    description="Readings of a sensor over trailing windows, one row per sensor per as-of day.",
    aggregations=(
        WindowAggregation("temp_sum", "temperature", "sum", ("1d", "3d", "7d"), "float64",
                          "Sum of temperatures, 0 when none"),
        WindowAggregation("temp_max", "temperature", "max", ("1d", "7d"), "float64",
                          "Highest temperature, null when none"),
        WindowAggregation("humidity_sum", "humidity", "sum", ("3d",), "float64",
                          "Sum of humidities, 0 when none"),
        WindowAggregation("humidity_max", "humidity", "max", ("3d", "7d"), "float64",
                          "Highest humidity, null when none"),
        WindowAggregation("readings", None, "count", ("1d", "3d", "7d"), "int64", "Number of valid readings"),
        WindowAggregation("sites", "site", "count_distinct", ("7d",), "int64", "Number of distinct sites"),
    ),
    attributes=(
        Attribute("model", "model", "string", "Sensor model"),
        Attribute("age_days", "installed_at", "int64", "Days from installation to the as-of date",
                  transform="days_until_as_of"),
    ),
)
'''


# ------------------------------------------------------------------------------------------------ project
@dataclass
class DataFile:
    dataset: str
    path: Path
    batch: int  # the ingest run that sees it first (0 = the first run)
    lines: List[str]  # as written, header first, no line ends

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class Project:
    root: Path
    seed: int
    cutoff: dt.datetime
    declarations: Dict[str, dict]
    files: List[DataFile] = field(default_factory=list)
    # dirt planted on purpose, noted by hand as it is written: {"file", "line", "expect"} where expect is
    # the ';'-joined rules quarantine must record (key_conflict: a key's other content), or "duplicate", or
    # "valid" (a tricky but valid line)
    planted: List[dict] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def batches(self) -> int:
        return 1 + max((f.batch for f in self.files), default=-1)

    def landing(self, dataset: str) -> Path:
        return self.root / "landing" / dataset

    def files_of(self, dataset: str, upto_batch: Optional[int] = None) -> List[DataFile]:
        return [f for f in self.files if f.dataset == dataset and (upto_batch is None or f.batch <= upto_batch)]

    def feature_set(self, name: str = "sensor_daily"):
        """The project's feature set, loaded from its module file (not from the repository's features/)."""
        path = self.root / "features" / f"{name}.py"
        module_name = f"_user_project_{abs(hash(str(path)))}_{name}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        return module.FEATURE_SET


def write_file(project: Project, dataset: str, name: str, batch: int, rows: Sequence[str]) -> DataFile:
    """Write one data file (header + `rows`) into the dataset's landing directory and record it."""
    header = ",".join(project.declarations[dataset]["columns"])
    path = project.landing(dataset) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [header, *rows]
    path.write_text("\n".join(lines) + "\n")
    data_file = DataFile(dataset, path, batch, lines)
    project.files.append(data_file)
    return data_file


def _fmt_ts(instant: dt.datetime, style: str) -> str:
    """An instant (UTC) as ISO-8601 text: "Z", zone-less (read as UTC) or with an offset like +02:00."""
    if style == "naive":
        local, zone = instant, ""
    elif style == "Z":
        local, zone = instant, "Z"
    else:
        sign = 1 if style[0] == "+" else -1
        hours, minutes = int(style[1:3]), int(style[4:6])
        local = instant + sign * dt.timedelta(hours=hours, minutes=minutes)
        zone = style
    text = local.strftime("%Y-%m-%dT%H:%M:%S")
    if local.microsecond:
        text += f".{local.microsecond // 1000:03d}"
    return text + zone


def _line(*fields: str) -> str:
    return ",".join(f'"{f}"' if "," in f else f for f in fields)


class _Clean:
    """Clean readings, seeded, with keys unique by construction."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set = set()

    def instant(self, day: dt.date) -> dt.datetime:
        while True:
            second = self.rng.randrange(24 * 3600)
            ms = self.rng.choice([0] * 9 + [250])
            at = dt.datetime.combine(day, dt.time(), UTC) + dt.timedelta(seconds=second, milliseconds=ms)
            if at not in self.used:
                self.used.add(at)
                return at

    def style(self) -> str:
        return self.rng.choice(["Z", "Z", "naive", "+02:00", "-05:00", "+05:30"])

    def temperature(self) -> str:
        cents = self.rng.randrange(-1000, 3500)
        text = f"{Decimal(cents) / 100:.2f}"
        if self.rng.random() < 0.2:
            text = text.rstrip("0").rstrip(".") if "." in text else text
        return text

    def humidity(self) -> str:
        if self.rng.random() < 0.15:
            return "NA"
        value = self.rng.randrange(200, 950) / 10
        return f"{value / 10:.3f}e1" if self.rng.random() < 0.1 else f"{value:.1f}"

    def status(self) -> str:
        return self.rng.choice(["ok"] * 6 + ["degraded", "NA"])

    def sensor(self, pool: Sequence[int]) -> int:
        return self.rng.choice(pool)

    def row(self, day: dt.date, pool: Sequence[int]) -> Tuple[str, dict]:
        at, sensor = self.instant(day), self.sensor(pool)
        fields = [self.rng.choice(SITES), str(sensor), _fmt_ts(at, self.style()), self.temperature(),
                  self.humidity(), self.status()]
        return _line(*fields), {"sensor_id": sensor, "at": at, "fields": fields}


def _readings_declaration(root: Path) -> dict:
    return {
        "kind": "files",
        "path": str(root / "landing" / "readings"),
        "formats": ["csv"],
        "null_tokens": list(NULL_TOKENS),
        "columns": READINGS_COLUMNS,
        "key": ["site", "sensor_id", "reading_time"],
        "keep": "first",
        "event_time": "reading_time",
    }


def _sensors_declaration(root: Path) -> dict:
    return {
        "kind": "files",
        "path": str(root / "landing" / "sensors"),
        "formats": ["csv"],
        "null_tokens": list(NULL_TOKENS),
        "columns": SENSORS_COLUMNS,
        "key": ["sensor_id"],
        "keep": "last",
    }


def new_project(root: Path, seed: int = 20260301) -> Project:
    """The project's configuration and feature module under `root`, no data yet."""
    root = Path(root)
    project = Project(root=root, seed=seed, cutoff=dt.datetime(2026, 3, 8, tzinfo=UTC),
                      declarations={"readings": _readings_declaration(root), "sensors": _sensors_declaration(root)})
    (root / "conf" / "dataset").mkdir(parents=True, exist_ok=True)
    (root / "features").mkdir(parents=True, exist_ok=True)
    (root / "conf" / "project.yaml").write_text(
        "# A project outside the repository: its own datasets and features.\n"
        f"cutoff: \"{CUTOFF}\"\n"
        "# A few hundred rows in a handful of files: the statistical checks of the gate would judge noise.\n"
        "quality:\n"
        "  completeness: {severity: warn}\n"
        "  row_count: {severity: warn}\n"
        "  drift: {severity: warn}\n")
    for name, declaration in project.declarations.items():
        (root / "conf" / "dataset" / f"{name}.yaml").write_text(yaml.safe_dump(declaration, sort_keys=False))
    (root / "features" / "sensor_daily.py").write_text(FEATURE_MODULE)
    for dataset in project.declarations:
        project.landing(dataset).mkdir(parents=True, exist_ok=True)
    return project


def build_project(root: Path, seed: int = 20260301, rows_per_day: int = 32) -> Project:
    """Write the project with its first delivery (batch 0) under `root` and return its record."""
    project = new_project(root, seed)
    rng = random.Random(seed)
    clean = _Clean(rng)
    pool = [1, 2, 3, 4, 5, 6, 7, 8]
    days = [FIRST_DAY + dt.timedelta(days=i) for i in range(DAYS)]
    per_day: Dict[dt.date, List[str]] = {}
    records: Dict[dt.date, List[dict]] = {}
    for day in days:
        per_day[day], records[day] = [], []
        for _ in range(rows_per_day):
            text, record = clean.row(day, pool)
            per_day[day].append(text)
            records[day].append(record)

    def plant(day: dt.date, expect: str, *fields: str, raw: Optional[str] = None, at: Optional[int] = None) -> str:
        text = raw if raw is not None else _line(*fields)
        rows = per_day[day]
        rows.insert(rng.randrange(len(rows) + 1) if at is None else at, text)
        project.planted.append({"file": f"readings_{day}.csv", "line": text, "expect": expect})
        return text

    d1, d2, d3, d4, d5 = days
    # -- missing or unparseable values, one rule each
    plant(d1, "sensor_id_present", "north", "", "2026-03-01T08:00:00Z", "20.00", "50.0", "ok")
    plant(d2, "sensor_id_present", "south", "NA", "2026-03-02T09:00:00Z", "21.00", "NA", "ok")
    plant(d4, "sensor_id_present", "east", "  ", "2026-03-04T10:00:00Z", "22.00", "55.5", "degraded")
    plant(d2, "sensor_id_parseable", "west", "7a", "2026-03-02T11:00:00Z", "19.50", "40.0", "ok")
    plant(d1, "temperature_parseable", "north", "3", "2026-03-01T12:00:00Z", "warm", "45.0", "ok")
    plant(d2, "temperature_parseable", "north", "4", "2026-03-02T12:00:00Z", "21.345", "45.0", "ok")  # 3 decimals
    plant(d3, "temperature_parseable", "south", "5", "2026-03-03T12:00:00Z", "12345", "45.0", "ok")  # 5 digits
    plant(d3, "temperature_parseable", "south", "6", "2026-03-03T13:00:00Z", "1e1", "45.0", "ok")  # no exponent
    plant(d4, "temperature_in_range", "east", "1", "2026-03-04T12:00:00Z", "75.50", "45.0", "ok")
    plant(d5, "temperature_in_range", "west", "2", "2026-03-05T12:00:00Z", "-60.01", "45.0", "ok")
    plant(d5, "temperature_present", "west", "2", "2026-03-05T13:00:00Z", "NA", "45.0", "ok")
    plant(d1, "humidity_parseable", "north", "5", "2026-03-01T13:00:00Z", "18.00", "high", "ok")
    plant(d2, "status_allowed", "south", "6", "2026-03-02T14:00:00Z", "18.00", "40.0", "OK")  # exact text
    plant(d3, "status_allowed", "south", "7", "2026-03-03T14:00:00Z", "18.00", "40.0", "broken")
    plant(d1, "site_present", "NA", "8", "2026-03-01T14:00:00Z", "18.00", "40.0", "ok")
    plant(d4, "site_present", "   ", "8", "2026-03-04T14:00:00Z", "18.00", "40.0", "ok")
    plant(d2, "reading_time_parseable", "north", "1", "2026-02-30T10:00:00Z", "18.00", "40.0", "ok")
    plant(d3, "reading_time_parseable", "north", "1", "yesterday", "18.00", "40.0", "ok")
    plant(d4, "reading_time_present", "north", "1", "NA", "18.00", "40.0", "ok")
    # -- at or after the cutoff (2026-03-08T00:00Z), also when only the offset puts it there
    plant(d5, "reading_time_not_after_cutoff", "east", "3", "2026-03-08T00:00:00Z", "18.00", "40.0", "ok")
    plant(d5, "reading_time_not_after_cutoff", "east", "3", "2026-03-09T10:00:00", "18.00", "40.0", "ok")
    plant(d5, "reading_time_not_after_cutoff", "east", "4", "2026-03-07T23:30:00-01:00", "18.00", "40.0", "ok")
    # -- several rules at once, in declaration order
    plant(d1, "sensor_id_present;temperature_in_range", "north", "NA", "2026-03-01T15:00:00Z", "75.50", "NA", "ok")
    plant(d2, "reading_time_not_after_cutoff;temperature_parseable", "south", "2", "2026-03-10T00:00:00Z", "warm",
          "40.0", "ok")
    plant(d3, "site_present;status_allowed", "", "3", "2026-03-03T15:00:00Z", "18.00", "40.0", "broken")
    plant(d4, "sensor_id_parseable;reading_time_parseable;temperature_present;humidity_parseable",
          "west", "x", "soon", "", "high", "NA")
    # -- wrong number of fields: that rule only
    plant(d2, "line_well_formed", raw="north,1,2026-03-02T16:00:00Z,18.00,40.0")
    plant(d4, "line_well_formed", raw="north,1,2026-03-04T16:00:00Z,18.00,40.0,ok,extra")
    # -- valid edge cases: range bounds inclusive, missing optional values, a quoted comma, an exponent
    plant(d2, "valid", "north", "6", "2026-03-02T17:00:00Z", "60.00", "NA", "NA")
    plant(d3, "valid", "north", "6", "2026-03-03T17:00:00Z", "-60", "", "degraded")
    plant(d3, "valid", "east,annex", "7", "2026-03-03T18:00:00.250Z", "0", "4.55e1", "ok")
    plant(d5, "valid", "west", "1", "2026-03-06T01:30:00+02:00", "12.25", "61.0", "ok")  # = 03-05T23:30Z
    plant(d5, "valid", "west", "1", "2026-03-05T23:59:59.999Z", "12.50", "NA", "ok")
    # sensor 9, not in sensors (null attributes), read on 03-01 (humidity missing: null maxima, zero sums)
    # and on 03-05 (as of 03-05 its 1- and 3-day windows are empty, its 7-day window is not)
    plant(d1, "valid", "south", "9", "2026-03-01T06:00:00Z", "5.00", "NA", "ok")
    plant(d1, "valid", "south", "9", "2026-03-01T18:30:00-05:00", "6.50", "", "NA")  # = 03-01T23:30Z
    plant(d5, "valid", "north", "9", "2026-03-05T06:00:00Z", "7.25", "30.0", "ok")
    # -- exact duplicate lines: in the same file, and a line of one day's file repeated in the next day's
    plant(d2, "duplicate", raw=_line(*records[d2][3]["fields"]))
    plant(d4, "duplicate", raw=_line(*records[d3][5]["fields"]))
    # -- re-delivered keys with other values: the earlier file wins, the later line is a key_conflict
    site, sensor, ts_text = records[d1][2]["fields"][:3]
    plant(d2, "key_conflict", site, sensor, ts_text, "33.33", "99.0", "degraded")
    # the same key written differently: sensor id with a leading zero, the instant with an offset
    at = records[d2][4]["at"]
    site, sensor = records[d2][4]["fields"][:2]
    plant(d3, "key_conflict", site, "0" + sensor, _fmt_ts(at, "+02:00"), "34.44", "98.0", "ok")
    # the first delivery of a key is invalid (quarantined), a later file's valid copy of it wins
    plant(d3, "temperature_in_range", "west", "5", "2026-03-03T20:00:00Z", "99.00", "50.0", "ok")
    plant(d4, "valid", "west", "5", "2026-03-03T20:00:00Z", "23.00", "50.5", "ok")
    # one key twice in its first file with different values: ambiguous, both are key_conflicts
    plant(d4, "key_conflict", "south", "4", "2026-03-04T21:00:00Z", "24.00", "60.0", "ok")
    plant(d4, "key_conflict", "south", "4", "2026-03-04T23:00:00+02:00", "25.00", "61.0", "ok")

    for day in days:
        write_file(project, "readings", f"readings_{day}.csv", 0, per_day[day])
    write_file(project, "sensors", "sensors_01.csv", 0, [
        "1,TH-100,2025-11-03T08:00:00Z",
        "2,TH-100,2025-12-15T09:30:00",
        "3,TH-200,2026-01-10T23:30:00-02:00",  # = 2026-01-11T01:30Z
        "4,TH-200,2026-02-01T00:00:00Z",
        "5,TH-300,2026-02-28T12:00:00Z",
        "6,TH-300,2025-06-30T22:00:00+02:00",
        "7,NA,2025-09-09T09:09:09Z",  # model missing (not required): null attribute
        "8,TH-100,NA",  # installation unknown: null age
        "S-12,TH-900,2025-01-01T00:00:00Z",  # sensor_id_parseable
        "11,TH-000,2024-05-05T05:05:05Z",  # no readings; its model changes in batch 1
    ])
    project.planted.append({"file": "sensors_01.csv", "line": "S-12,TH-900,2025-01-01T00:00:00Z",
                            "expect": "sensor_id_parseable"})
    return project


def add_batch(project: Project) -> List[DataFile]:
    """The next delivery (batch 1): day 2026-03-06, a re-delivered key, a late event, a new sensor."""
    if project.batches != 1:
        raise ValueError("add_batch writes batch 1 once")
    rng = random.Random(project.seed + 1)
    clean = _Clean(rng)
    day = FIRST_DAY + dt.timedelta(days=DAYS)
    rows = [clean.row(day, [1, 2, 3, 4, 5, 6, 7, 8, 10])[0] for _ in range(30)]
    name = f"readings_{day}.csv"
    planted = {p["line"] for p in project.planted}
    clean_lines = {f.name: [line for line in f.lines[1:] if line not in planted] for f in project.files_of("readings")}
    redelivered = next(csv.reader([clean_lines["readings_2026-03-02.csv"][6]]))[:3]
    extra = [
        ("key_conflict", _line(*redelivered, "1.11", "11.0", "ok")),  # a key of 03-02, other values
        ("duplicate", clean_lines["readings_2026-03-04.csv"][2]),  # an exact copy of an earlier line
        ("valid", _line("north", "2", "2026-03-02T07:07:07Z", "7.07", "70.7", "ok")),  # late event of 03-02
        ("valid", _line("north", "2", "2026-03-08T00:30:00+01:00", "8.80", "NA", "ok")),  # = 03-07T23:30Z
        ("temperature_parseable", _line("south", "10", "2026-03-06T12:00:00Z", "hot", "40.0", "ok")),
    ]
    for expect, text in extra:
        rows.insert(rng.randrange(len(rows) + 1), text)
        project.planted.append({"file": name, "line": text, "expect": expect})
    written = [write_file(project, "readings", name, 1, rows)]
    written.append(write_file(project, "sensors", "sensors_02.csv", 1, [
        "10,TH-400,2026-03-05T10:00:00+01:00",  # a new sensor, first read on 03-06
        "11,TH-001,2024-05-05T05:05:05Z",  # a newer row for a sensor without readings: it replaces the old
    ]))
    return written


# ------------------------------------------------------------------------------------------------- oracle
NULL_TEXT = "\x00<null>"  # what bronze's row hash hashes a missing value as (pipelines/io/row_hash.py)

_INTEGER = re.compile(r"-?[0-9]{1,18}")
_FLOAT = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?(?:Z|[+-][0-9]{2}:[0-9]{2})?")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_DECIMAL_TYPE = re.compile(r"decimal\((\d+),\s*(\d+)\)")

RULE_ORDER = ("present", "parseable", "known", "in_range", "allowed", "pattern", "not_after_cutoff")


class Unparseable(ValueError):
    pass


def parse_value(text: str, type_: str):
    """A present value as the column's type, straight from the rule text; raises Unparseable."""
    if type_ == "string":
        return text
    if type_ == "integer":
        if not _INTEGER.fullmatch(text):
            raise Unparseable(text)
        return int(text)
    if type_ == "float":
        if not _FLOAT.fullmatch(text):
            raise Unparseable(text)
        return float(text)
    if type_ == "boolean":
        lowered = text.lower()
        if lowered not in ("true", "false", "1", "0"):
            raise Unparseable(text)
        return lowered in ("true", "1")
    if type_ == "date":
        if not _DATE.fullmatch(text):
            raise Unparseable(text)
        try:
            return dt.date.fromisoformat(text)
        except ValueError:
            raise Unparseable(text) from None
    if type_ == "timestamp":
        if not _TIMESTAMP.fullmatch(text):
            raise Unparseable(text)
        try:
            value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise Unparseable(text) from None
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
    match = _DECIMAL_TYPE.fullmatch(type_)
    if match:
        p, s = int(match.group(1)), int(match.group(2))
        if not re.fullmatch(rf"-?[0-9]{{1,{p - s}}}(?:\.[0-9]{{1,{s}}})?", text):
            raise Unparseable(text)
        return Decimal(text)
    raise ValueError(f"unknown type {type_!r}")


def is_missing(value: Optional[str], null_tokens: Sequence[str]) -> bool:
    return value is None or value.strip() == "" or value in null_tokens


def check_row(declaration: dict, fields: Optional[List[str]], cutoff: dt.datetime,
              known: Optional[Dict[str, set]] = None) -> Tuple[List[str], Dict[str, object]]:
    """(failed rule names in quarantine's order, typed values) of one source row; `fields` None or of the
    wrong length is a malformed line. `known` maps "<dataset>.<column>" to the keys silver holds."""
    columns: Dict[str, dict] = declaration["columns"]
    if fields is None or len(fields) != len(columns):
        return ["line_well_formed"], {}
    null_tokens = declaration.get("null_tokens", [])
    failed: List[str] = []
    typed: Dict[str, object] = {}
    for (name, rules), text in zip(columns.items(), fields):
        if is_missing(text, null_tokens):
            typed[name] = None
            if rules.get("required"):
                failed.append(f"{name}_present")
            continue
        try:
            value = parse_value(text, rules.get("type", "string"))
        except Unparseable:
            typed[name] = None
            failed.append(f"{name}_parseable")
            continue
        typed[name] = value
        if rules.get("references") and value not in (known or {}).get(rules["references"], set()):
            failed.append(f"{name}_known")
        bounds = rules.get("range")
        if bounds:
            number = value if isinstance(value, (Decimal, int)) else Decimal(repr(value))
            low, high = bounds.get("min"), bounds.get("max")
            ok = True
            if low is not None:
                ok &= number > Decimal(str(low)) if bounds.get("min_exclusive") else number >= Decimal(str(low))
            if high is not None:
                ok &= number < Decimal(str(high)) if bounds.get("max_exclusive") else number <= Decimal(str(high))
            if not ok:
                failed.append(f"{name}_in_range")
        if rules.get("allowed") is not None and text not in rules["allowed"]:
            failed.append(f"{name}_allowed")
        if rules.get("pattern") and not re.fullmatch(rules["pattern"], text):
            failed.append(f"{name}_pattern")
        if rules.get("not_after_cutoff") and not value < cutoff:
            failed.append(f"{name}_not_after_cutoff")
    return failed, typed


def row_hash(fields: Optional[List[str]], malformed: Optional[str], n_columns: int) -> str:
    """Bronze's `_row_hash` restated: pandas' hash of the row's source text (declared columns, then the
    malformed line; a missing value as NULL_TEXT), as 16 hex digits."""
    values = list(fields) if fields is not None else [None] * n_columns
    frame = pd.DataFrame([values + [malformed]], dtype="string")
    return "{:016x}".format(int(pd.util.hash_pandas_object(frame.fillna(NULL_TEXT), index=False).iloc[0]))


@dataclass
class RawRow:
    file: str  # file name
    batch: int
    number: int  # 1-based line number in the file (the header is line 1)
    text: str  # the line as written
    fields: Optional[List[str]]  # None: malformed (wrong number of fields)
    rules: List[str]
    typed: Dict[str, object]
    hash: str

    def identity(self, null_tokens: Sequence[str]) -> tuple:
        """How a quarantine row is matched to its source line: file and its fields (a missing value in
        any spelling as None), or the malformed line's text."""
        if self.fields is None:
            return (self.file, "malformed", self.text)
        return (self.file, "row", tuple(None if is_missing(v, null_tokens) else v for v in self.fields))


def raw_rows(declaration: dict, files: Sequence[DataFile], cutoff: dt.datetime) -> List[RawRow]:
    """Every data line of `files`, checked."""
    n = len(declaration["columns"])
    out = []
    for data_file in files:
        text = data_file.path.read_text()
        assert text.endswith("\n") and "\r" not in text
        lines = text[:-1].split("\n")
        assert next(csv.reader([lines[0]])) == list(declaration["columns"]), data_file.path
        for number, line in enumerate(lines[1:], start=2):
            fields = next(csv.reader([line]))
            well_formed = len(fields) == n
            rules, typed = check_row(declaration, fields if well_formed else None, cutoff)
            out.append(RawRow(data_file.name, data_file.batch, number, line, fields if well_formed else None,
                              rules, typed, row_hash(fields if well_formed else None,
                                                     None if well_formed else line, n)))
    return out


def _key_of(row: RawRow, key: Sequence[str]) -> tuple:
    return tuple(row.typed[c] for c in key)


@dataclass
class ExpectedSilver:
    """What silver and quarantine of one dataset must hold after the given batches."""

    dataset: str
    rows: List[RawRow]  # every source line, checked
    silver: List[dict]  # typed rows (declared columns) silver holds
    winners: List[RawRow]  # the source line of each silver row
    outcome: Dict[Tuple[str, int], str]  # (file, line number) -> "valid" | "duplicate" | the failed rules
    counts: Dict[int, Dict[str, int]]  # batch -> bronze_rows_refined, silver_rows_added, quarantined,
    #                                    duplicates_dropped (events datasets)
    null_tokens: List[str]

    def quarantine(self) -> Counter:
        """(identity, failed rules) of every row quarantine must hold, with multiplicity."""
        return Counter((r.identity(self.null_tokens), ";".join(r.rules)) for r in self.rows if r.rules)


def expected_silver(project: Project, dataset: str = "readings", upto_batch: Optional[int] = None) -> ExpectedSilver:
    """Silver, quarantine and row accounting of `dataset` after batches 0..upto_batch (default: all)."""
    declaration = project.declarations[dataset]
    key = declaration["key"] if isinstance(declaration["key"], list) else [declaration["key"]]
    rows = raw_rows(declaration, project.files_of(dataset, upto_batch), project.cutoff)
    outcome = {(r.file, r.number): ";".join(r.rules) for r in rows if r.rules}
    valid = [r for r in rows if not r.rules]
    counts: Dict[int, Dict[str, int]] = {}
    winners: Dict[tuple, RawRow] = {}
    if declaration.get("event_time"):
        # events, delivery by delivery (a batch's file, in batch then file order): the first delivery that
        # gives a key one content wins (its first line); a later line of that content is a duplicate, a line
        # of other content a key_conflict (quarantined); a delivery giving a key two contents before it has a
        # winner is ambiguous: each of its lines of that key is a key_conflict
        by_key: Dict[tuple, List[RawRow]] = {}
        for row in sorted(valid, key=lambda r: (r.batch, r.file, r.number)):
            by_key.setdefault(_key_of(row, key), []).append(row)
        for k, mine in by_key.items():
            for _, delivery in itertools.groupby(mine, key=lambda r: (r.batch, r.file)):
                delivery = list(delivery)
                if k not in winners and len({r.hash for r in delivery}) == 1:
                    winners[k] = delivery[0]
                    outcome[(delivery[0].file, delivery[0].number)] = "valid"
                    delivery = delivery[1:]
                for row in delivery:
                    if k in winners and row.hash == winners[k].hash:
                        outcome[(row.file, row.number)] = "duplicate"
                    else:
                        row.rules = ["key_conflict"]
                        outcome[(row.file, row.number)] = "key_conflict"
        for batch in sorted({r.batch for r in rows}):
            mine = [r for r in rows if r.batch == batch]
            counts[batch] = {
                "bronze_rows_refined": len(mine),
                "silver_rows_added": sum(outcome[(r.file, r.number)] == "valid" for r in mine),
                "quarantined": sum(bool(r.rules) for r in mine),
                "duplicates_dropped": sum(outcome[(r.file, r.number)] == "duplicate" for r in mine),
            }
    else:
        # a dimension: the newest row of each key wins (later batch, later file); no key repeats within
        # one file of this project, so no further tie-break is needed
        ordered = sorted(valid, key=lambda r: (r.batch, r.file))
        repeated = [k for k, n in Counter((r.file, _key_of(r, key)) for r in ordered).items() if n > 1]
        assert not repeated, f"a key twice in one file is not covered by this oracle: {repeated}"
        for row in ordered:
            winners[_key_of(row, key)] = row
        for row in valid:
            outcome[(row.file, row.number)] = "valid" if winners[_key_of(row, key)] is row else "replaced"
    kept = sorted(winners.values(), key=lambda r: tuple(_sortable(v) for v in _key_of(r, key)))
    return ExpectedSilver(dataset, rows, [dict(r.typed) for r in kept], kept, outcome, counts,
                          list(declaration.get("null_tokens", [])))


def _sortable(value):
    return (value is None, value)


def expected_entities(project: Project, upto_batch: Optional[int] = None) -> Dict[int, dict]:
    """The sensors' current state, as tests/oracle.py takes it: sensor_id -> {model, installed_at}."""
    return {row["sensor_id"]: {"model": row["model"], "installed_at": row["installed_at"]}
            for row in expected_silver(project, "sensors", upto_batch).silver}


def expected_gold(project: Project, fs=None, upto_batch: Optional[int] = None) -> pd.DataFrame:
    """Gold of the feature set over the expected silver events: tests/oracle.py's brute force, as-of days
    from the first event day + 1 to the last event day + 1."""
    from tests.oracle import oracle

    fs = fs or project.feature_set()
    events = expected_silver(project, fs.source_table, upto_batch).silver
    days = sorted({e[fs.timestamp_column].astimezone(UTC).date() for e in events})
    frame = oracle(events, fs, days[0] + dt.timedelta(days=1), days[-1] + dt.timedelta(days=1),
                   expected_entities(project, upto_batch))
    return frame.sort_values([fs.entity.join_key, fs.as_of_column]).reset_index(drop=True)
