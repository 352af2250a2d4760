"""Put a sample data set where a prod run reads it: the daily transaction files under an object-store
prefix, the users table in a database server (what `medallion sample-data` writes locally).

usage: python scripts/stage_sample.py SAMPLE_DIR LANDING_URI USERS_DB_URI [USERS_TABLE]
  e.g. python scripts/stage_sample.py data/sample s3://medallion/landing \\
           postgresql+psycopg2://postgres@127.0.0.1:5432/medallion_app users

Object-store credentials and endpoint come from the environment (AWS_*), like the pipeline's.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pandas as pd
import pyarrow.fs as pafs
import sqlalchemy


def stage(sample_dir: Path, landing: str, users_uri: str, users_table: str = "users") -> dict:
    fs, root = pafs.FileSystem.from_uri(landing.rstrip("/") + "/transactions")
    files = sorted((sample_dir / "transactions").iterdir())
    for path in files:
        with fs.open_output_stream(f"{root}/{path.name}") as out:
            out.write(path.read_bytes())
    with sqlite3.connect(sample_dir / "users.db") as conn:
        users = pd.read_sql("SELECT * FROM users", conn)
    schema, _, table = users_table.rpartition(".")
    engine = sqlalchemy.create_engine(users_uri)
    with engine.begin() as conn:
        if schema:
            conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    users.to_sql(table, engine, schema=schema or None, if_exists="replace", index=False)
    engine.dispose()
    return {"files": len(files), "users": len(users)}


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    print(stage(Path(sys.argv[1]), sys.argv[2], sys.argv[3], *(sys.argv[4:5])))
