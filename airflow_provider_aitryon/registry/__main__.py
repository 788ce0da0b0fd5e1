"""Inspect and purge the submission registry: ``python -m airflow_provider_aitryon.registry``.

    list  [--output DIR]   entries (and claims) with their scope, task id, status and age
    purge [--output DIR]   delete what DashScope can no longer hand back (older than 24 h)

Without ``--output`` it works on the Airflow Variables of the deployment (the submit operators'
entries and every path's claims), so run it where the ``airflow`` command runs (it reads the
metadata database). With ``--output`` it works on one backfill partition's ``registry/`` folder
(a local path or an object-storage URI).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

from airflow_provider_aitryon.registry import OPERATOR_PREFIX, RETENTION_SECONDS, Submission, partition_registry
from airflow_provider_aitryon.registry.claims import CLAIM_PREFIX


def _variables(prefix: str) -> Iterator[tuple[str, Any]]:
    from airflow.models.variable import Variable as VariableRow
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(VariableRow).filter(VariableRow.key.like(f"{prefix}%")).all()
        found = [(row.key, row.val) for row in rows]
    for key, raw in found:
        try:
            yield key, json.loads(raw)
        except (TypeError, ValueError):
            yield key, None


def _delete_variable(key: str) -> None:
    from airflow.models.variable import Variable as VariableRow

    VariableRow.delete(key)


def _describe(entry: Submission) -> str:
    age = entry.age / 3600
    return (f"{entry.scope}  task {entry.task_id or '(intent only)'}  {entry.status or '-'}"
            f"{'  adopted' if entry.adopted else ''}  {age:.1f} h old")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m airflow_provider_aitryon.registry", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("command", choices=("list", "purge"))
    parser.add_argument("--output", help="a backfill output partition (path or URI) instead of Airflow Variables")
    parser.add_argument("--conn-id", help="object-storage connection of --output")
    args = parser.parse_args(argv)

    if args.output:
        registry = partition_registry(args.output, conn_id=args.conn_id)
        if args.command == "purge":
            gone = registry.purge_expired()
            print(f"Deleted {len(gone)} expired entries from {registry.where}.")
        else:
            for key, entry in sorted(registry.entries().items()):
                print(f"{key}  {_describe(entry)}")
        return 0

    now = time.time()
    deleted = 0
    for key, value in _variables(OPERATOR_PREFIX):
        found = Submission.from_dict(value)
        if args.command == "list":
            print(f"{key}  {_describe(found) if found else '(not an entry)'}")
        elif found is None or found.expired:
            _delete_variable(key)
            deleted += 1
    for key, value in _variables(CLAIM_PREFIX):
        at = float(value.get("at") or 0) if isinstance(value, dict) else 0.0
        if args.command == "list":
            print(f"{key}  claimed by {value.get('scope') if isinstance(value, dict) else '?'}  "
                  f"{(now - at) / 3600:.1f} h old")  # fmt: skip
        elif now - at >= RETENTION_SECONDS:
            _delete_variable(key)
            deleted += 1
    if args.command == "purge":
        print(f"Deleted {deleted} expired registry Variables.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
