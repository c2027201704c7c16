"""PostgreSQL round trip: COPY rows in, re-insert some idempotently, read back exactly."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from psycopg import sql

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60)]

Row = tuple[str, int, datetime, float]

T0 = datetime(2024, 2, 29, 23, 59, 59, 999_999, tzinfo=timezone.utc)
# Device ids that COPY's text format must escape, and values that must survive exactly.
DEVICES = ["dev-1", "dev\t2\\x", "capteur-é-😀"]
VALUES = [0.0, -0.0, 0.1, -3.3, 1e-300, 1.7976931348623157e308, float("inf"), float("-inf")]


def reading(device: str, seq: int) -> Row:
    return (device, seq, T0 + timedelta(microseconds=seq * 1_000_003), VALUES[seq % len(VALUES)])


def test_copy_then_insert_on_conflict_do_nothing(postgres_dsn: str, unique_name: str) -> None:
    table = sql.Identifier(unique_name)
    copied = [reading(device, seq) for device in DEVICES for seq in range(200)]
    # A redelivery: every third row again with a changed value (must be ignored), plus new rows.
    again = [(device, seq, ts, value + 1.0) for device, seq, ts, value in copied[::3]]
    new = [reading("dev-new", seq) for seq in range(20)]

    with psycopg.connect(postgres_dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (device_id text NOT NULL, seq bigint NOT NULL,"
                " ts timestamptz NOT NULL, value double precision NOT NULL,"
                " PRIMARY KEY (device_id, seq))"
            ).format(table)
        )
        try:
            with conn.cursor() as cur:
                copy_sql = sql.SQL("COPY {} (device_id, seq, ts, value) FROM STDIN").format(table)
                with cur.copy(copy_sql) as copy:
                    for row in copied:
                        copy.write_row(row)

                batch = again + new
                cur.execute(
                    sql.SQL(
                        "INSERT INTO {} (device_id, seq, ts, value)"
                        " SELECT * FROM unnest(%s::text[], %s::bigint[], %s::timestamptz[],"
                        " %s::float8[])"
                        " ON CONFLICT (device_id, seq) DO NOTHING RETURNING device_id, seq"
                    ).format(table),
                    [list(column) for column in zip(*batch, strict=True)],
                )
                assert sorted(cur.fetchall()) == sorted((d, s) for d, s, _, _ in new)

                cur.execute(sql.SQL("SELECT device_id, seq, ts, value FROM {}").format(table))
                assert sorted(cur.fetchall()) == sorted(copied + new)
        finally:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
