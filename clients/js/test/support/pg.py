"""PostgreSQL for the JS tests, through the repository's own test support (tests/support/db.py):

    pg.py create                 -> {"url": ..., "name": ...}   a fresh database with the schema
    pg.py drop NAME
    pg.py query URL SQL PARAMS   -> rows as JSON (timestamps as ISO-8601 with ms and Z)
"""
import datetime as dt
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "tests"))

from support.db import ADMIN_URL, Seed, TestDatabase  # noqa: E402


def plain(value):
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    raise TypeError(type(value).__name__)


def main(argv):
    if argv[0] == "create":
        db = TestDatabase().create()
        print(json.dumps({"url": db.url, "name": db.name}))
    elif argv[0] == "drop":
        db = TestDatabase()
        db.name = argv[1]
        db.drop()
    elif argv[0] == "query":
        seed = Seed(argv[1])
        try:
            sql, params = argv[2], json.loads(argv[3])
            if sql.lstrip().upper().startswith(("SELECT", "WITH")) or " RETURNING " in sql.upper():
                print(json.dumps(seed.query(sql, params), default=plain))
            else:
                seed.execute(sql, params)
                print("[]")
        finally:
            seed.close()
    else:
        raise SystemExit(f"unknown command {argv[0]!r} (admin: {ADMIN_URL.split('@')[-1]})")


if __name__ == "__main__":
    main(sys.argv[1:])
