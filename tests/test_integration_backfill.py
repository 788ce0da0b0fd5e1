"""The catalog backfill DAG in real Airflow (`airflow dags test`) against the emulator."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import airflow_env, dags_test, make_coarse_image, migrate, task_states, xcom_value

from airflow_provider_aitryon.emulator import Emulator, EmulatorConfig

pytestmark = pytest.mark.integration

DAG_ID = "aitryon_catalog_backfill"


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator(EmulatorConfig(latency=0.5)) as emu:
        yield emu


@pytest.fixture(scope="module")
def airflow(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    home = tmp_path_factory.mktemp("airflow_home")
    env = airflow_env(home, emulator.base_url, api_key="sk-backfill-test")
    migrate(env)
    return home, env


def write_catalog(path: Path, emu: Emulator, coarse_url: str) -> None:
    lines: list[str] = []
    for i in range(10):
        item: dict[str, Any] = {
            "sku": f"sku-{i:02d}",
            "person_image_url": emu.sample_url("person.png"),
            "top_garment_url": emu.sample_url("top.png"),
            "bottom_garment_url": emu.sample_url("bottom.png"),
            "gender": "man" if i % 2 else "woman",
        }
        if i < 4:
            item["coarse_image_url"] = coarse_url  # these skip the coarse stage
        lines.append(json.dumps(item))
    lines[6] = json.dumps({**json.loads(lines[6]), "person_image_url": emu.sample_url("blank_person.png")})
    lines[7] = json.dumps({**json.loads(lines[7]), "gender": "unknown"})
    lines.append("{not json")
    path.write_text("\n".join(lines) + "\n")


def manifest(output: Path) -> dict[str, dict[str, Any]]:
    rows = [json.loads(line) for line in (output / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == len({row["sku"] for row in rows})  # one line per item
    return {row["sku"]: row for row in rows}


def test_backfill_records_every_item_and_a_rerun_submits_nothing(emulator, airflow, tmp_path):
    home, env = airflow
    coarse_url = make_coarse_image(env)
    catalog, output = tmp_path / "2026-01-05.jsonl", tmp_path / "out"
    write_catalog(catalog, emulator, coarse_url)
    conf = {"catalog": str(catalog), "output": str(output), "chunk_size": 3, "expected_latency": 0.5}
    before = dict(emulator.stats()["submits_by_model"])

    result = dags_test(env, DAG_ID, conf, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    states = task_states(home, DAG_ID)
    assert states["finalize"] == "success"
    assert sum(task.startswith("refine_chunk[") for task in states) == 3  # 9 well-formed items / 3

    rows = manifest(output)
    assert len(rows) == 11  # 10 catalog items and the unparsable line
    succeeded = {sku for sku, row in rows.items() if row["status"] == "succeeded"}
    assert succeeded == {f"sku-{i:02d}" for i in (0, 1, 2, 3, 4, 5, 8, 9)}
    assert rows["sku-06"]["code"] == "InvalidPerson" and rows["sku-06"]["retryable"] is False
    assert rows["sku-07"]["code"] == "InvalidCatalogLine" and "gender" in rows["sku-07"]["message"]
    assert rows["line-11"]["code"] == "InvalidCatalogLine"
    for sku in succeeded:
        image = Path(rows[sku]["image"])
        assert image.is_file() and image.read_bytes()[:4] == b"\x89PNG"
        assert "refine" in rows[sku]["task_ids"]
        assert ("coarse" in rows[sku]["task_ids"]) == (int(sku[-2:]) >= 4)

    after = emulator.stats()["submits_by_model"]
    # One coarse task for each of the 5 items without a coarse image (incl. the blank person), one
    # refiner task for each of the 8 that got that far: nothing twice.
    assert after["aitryon"] - before.get("aitryon", 0) == 5
    assert after["aitryon-refiner"] - before.get("aitryon-refiner", 0) == 8

    # Spend: plan priced, before submitting, every stage with no paid task: 5 coarse and 9 refiner
    # images (the blank person's refine among them: the estimate is a ceiling). It is in XCom and
    # in the manifest's summary.
    spend = xcom_value(home, DAG_ID, "plan", key="spend")
    assert spend["images"] == {"aitryon": 5, "aitryon-refiner": 9}
    assert (spend["items"], spend["to_submit"], spend["total"]) == (11, 9, "3.70")  # 5 x 0.20 + 9 x 0.30
    assert spend["needs_approval"] is False
    assert xcom_value(home, DAG_ID, "approve_spend")["by"] == "auto"
    summary = json.loads((output / "summary.json").read_text())
    assert summary["plan"]["images"] == spend["images"] and summary["status"] == "finished"
    # Charged: the successful tasks only (the blank person's coarse task failed: free), this run's.
    charged = {"aitryon": 4, "aitryon-refiner": 8}
    assert summary["charged"]["images"] == charged and summary["charged"]["total"] == "3.20"
    assert xcom_value(home, DAG_ID, "finalize")["charged"] == summary["charged"]
    run_id = summary["run"]
    for sku in succeeded:  # each item says which run paid for which of its images
        paid = {"aitryon-refiner": run_id, **({"aitryon": run_id} if int(sku[-2:]) >= 4 else {})}
        assert rows[sku]["charged"] == paid
    assert event_extra(home, "aitryon_catalog_partition")["charged"] == summary["charged"]
    assert event_extra(home, "aitryon_catalog_partition")["report"] == str(output / "report.html")
    assert (output / "report.html").read_text().count('class="item"') == 11
    check_gallery_in_browser(output / "report.html", rows)

    rerun = dags_test(env, DAG_ID, conf, timeout=600)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-4000:]
    assert emulator.stats()["submits_by_model"] == after  # the rerun submits nothing
    assert manifest(output).keys() == rows.keys()
    # ... and was priced and charged at nothing, while the partition's total stays.
    summary = json.loads((output / "summary.json").read_text())
    assert summary["plan"]["images"] == {"aitryon": 0, "aitryon-refiner": 0} and summary["plan"]["total"] == "0"
    assert summary["charged"]["images"] == {} and summary["charged"]["total"] == "0"
    assert summary["partition_charged"]["images"] == charged


def event_extra(home: Path, asset: str) -> dict[str, Any]:
    """The extra of the latest event of an Asset, as the metadata DB holds it."""
    with sqlite3.connect(home / "airflow.db") as db:
        row = db.execute(
            "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.name = ? ORDER BY e.id DESC",
            (asset,),
        ).fetchone()
    assert row is not None, f"no event of asset {asset}"
    return json.loads(row[0])


def check_gallery_in_browser(page: Path, rows: dict[str, dict[str, Any]]) -> None:
    """The partition's gallery in headless Chromium: it loads cleanly, every thumbnail renders, and
    its counts are the manifest's (skipped without Chromium, unless AITRYON_REQUIRE_BROWSER=1)."""
    from browser import inspect_page, require_browser

    require_browser()
    seen = inspect_page(page)
    assert seen["console_errors"] == [] and seen["page_errors"] == [] and seen["external_requests"] == []
    assert seen["broken_images"] == []
    statuses = Counter(row["status"] for row in rows.values())
    assert seen["items"] == len(rows) and set(seen["skus"]) == set(rows)
    assert seen["by_status"] == dict(statuses)
    assert seen["totals"] == {"items": str(len(rows)), "succeeded": str(statuses["succeeded"]),
                              "failed": str(statuses["failed"]), "undone": "0"}  # fmt: skip
    # Every succeeded item shows its person, garments, coarse and refined images.
    assert seen["images"] >= 5 * statuses["succeeded"]
