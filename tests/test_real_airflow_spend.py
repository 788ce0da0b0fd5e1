"""Spend approval of the catalog backfill in a real, running Airflow, against the emulator over HTTP.

The backfill DAG (dags/aitryon_catalog_backfill.py, as deployed) runs on the four components of
scripts/real_airflow.py: ``plan`` prices a partition before anything is paid, ``approve_spend``
(SpendApprovalOperator) asks a person through Airflow's human-in-the-loop API when the estimate is
above ``approve_above``, and ``max_cost`` stops a run in ``plan``. Every scenario is proven with the
emulator's submit counters and the files on disk:

a. ``approve_above=0``: the task waits for input (``awaiting_input`` on Airflow 3.3, deferred
   before) with nothing submitted; the question read through the REST API shows the estimate and
   the item count; a Reject answered through the REST API skips the refinement: nothing submitted,
   no image, finalize succeeds and the run ends well;
b. the same partition again, answered Approve: exactly the estimated images are submitted, per model;
c. ``max_cost`` below the estimate: ``plan`` fails on its first try, in one sentence with the
   estimate and the limit, nothing submitted;
d. an estimate below ``approve_above``: approved without asking (no question exists), run succeeds.

Two runs at a time (the DAG allows two) keep the file near two minutes: (a) waits for its answer
while (c) fails, and (b) waits while (d) runs, so each counter delta belongs to one run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import make_coarse_image
from packaging.version import Version
from real_airflow import USERNAME, RealAirflow

from airflow_provider_aitryon import api, compat
from airflow_provider_aitryon.emulator import Emulator, EmulatorConfig
from airflow_provider_aitryon.pricing import estimate_cost

# slow: about 2.5 minutes of a real Airflow; `make test-slow` (and CI) runs it, `make test` leaves it out.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(420)]

REPO = Path(__file__).resolve().parent.parent
DAG_ID = "aitryon_catalog_backfill"
API_KEY = "sk-real-spend-SECRET-90b1c4d7e2"
APPROVE = "approve_spend"
# 5 usable items, 2 of them with a coarse image already (refiner only), and one unusable line.
IMAGES = {api.MODEL_TRYON: 3, api.MODEL_REFINER: 5}
ESTIMATE = estimate_cost(IMAGES).total  # CNY 2.10 at list price
ITEMS = 6
# Airflow 3.3 parks the task in awaiting_input; before, the standard provider defers to HITLTrigger.
WAITING = "awaiting_input" if Version("3.3") <= compat.AIRFLOW_VERSION else "deferred"


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator(EmulatorConfig(latency=0.5, api_key=API_KEY, log_requests=False)) as emu:
        yield emu


@pytest.fixture(scope="module")
def airflow(emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealAirflow]:
    workdir = tmp_path_factory.mktemp("real_airflow_spend")
    with RealAirflow.started(
        workdir,
        emulator.base_url,
        API_KEY,
        dag_files=[REPO / "dags" / "aitryon_catalog_backfill.py"],
        dag_ids=[DAG_ID],
        AITRYON_CATALOG_ROOT=str(workdir / "catalogs"),
        AITRYON_BACKFILL_OUTPUT=str(workdir / "outputs"),
    ) as real:
        yield real


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Partition outputs; ``shared`` is the partition (a) rejects and (b) approves."""
    return tmp_path_factory.mktemp("outputs")


@pytest.fixture(scope="module")
def catalog(airflow: RealAirflow, emulator: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The partition's catalog; its coarse image is made before any counter is read."""
    coarse_url = make_coarse_image(airflow.env)
    lines = []
    for i in range(5):
        item: dict[str, Any] = {
            "sku": f"sku-{i:02d}",
            "person_image_url": emulator.sample_url("person.png"),
            "top_garment_url": emulator.sample_url("top.png"),
            "bottom_garment_url": emulator.sample_url("bottom.png"),
            "gender": "man" if i % 2 else "woman",
        }
        if i < 2:
            item["coarse_image_url"] = coarse_url
        lines.append(json.dumps(item))
    lines.append("{not json")
    path = tmp_path_factory.mktemp("catalogs") / "2026-01-05.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def conf(catalog: Path, output: Path, **spend: Any) -> dict[str, Any]:
    return {"catalog": str(catalog), "output": str(output), "chunk_size": 3, "expected_latency": 0.5, **spend}


def trigger(af: RealAirflow, run_id: str, day: int, run_conf: dict[str, Any]) -> None:
    """Start a run through the REST API, with a logical date: ``locate`` reads the run's ``ds``.

    (``airflow dags trigger`` without ``--logical-date`` starts a run that has none, and ``locate``
    then fails with a TypeError for the missing ``ds``.)
    """
    body = {"dag_run_id": run_id, "logical_date": f"2026-01-{day:02d}T00:00:00Z", "conf": run_conf}
    response = af.api("POST", f"/dags/{DAG_ID}/dagRuns", json=body)
    assert response.status_code == 200, response.text


def submits(emulator: Emulator) -> dict[str, int]:
    return {model: int(n) for model, n in emulator.stats()["submits_by_model"].items()}


def since(emulator: Emulator, before: dict[str, int]) -> dict[str, int]:
    """Submits per model since ``before`` (models with none left out)."""
    now = submits(emulator)
    return {model: n - before.get(model, 0) for model, n in now.items() if n - before.get(model, 0)}


def images_on_disk(output: Path) -> list[Path]:
    return sorted(p for p in output.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))


def summary(output: Path) -> dict[str, Any]:
    return dict(json.loads((output / "summary.json").read_text()))


def hitl_path(run_id: str) -> str:
    return f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{APPROVE}/-1/hitlDetails"


def wait_for_question(af: RealAirflow, run_id: str) -> dict[str, Any]:
    """Wait until approve_spend waits for a person; return its question as the REST API shows it."""
    af.wait_until(
        lambda: af.ti_state(DAG_ID, run_id, APPROVE) == WAITING, 120, f"{APPROVE} to wait", run=(DAG_ID, run_id)
    )
    response = af.api("GET", hitl_path(run_id))
    assert response.status_code == 200, response.text
    return dict(response.json())


def answer(af: RealAirflow, run_id: str, option: str) -> dict[str, Any]:
    response = af.api("PATCH", hitl_path(run_id), json={"chosen_options": [option]})
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_a_rejected_spend_submits_nothing_and_c_max_cost_stops_plan(airflow, emulator, catalog, outputs):
    shared, over = outputs / "shared", outputs / "over_limit"
    before = submits(emulator)
    trigger(airflow, "spend_reject", 5, conf(catalog, shared, approve_above=0))
    trigger(airflow, "spend_over_limit", 6, conf(catalog, over, max_cost=1, approve_above=0))

    # (a) the question, while nothing is paid
    question = wait_for_question(airflow, "spend_reject")
    assert airflow.ti_state(DAG_ID, "spend_reject", APPROVE) == WAITING
    assert since(emulator, before) == {}
    spend = airflow.xcom(DAG_ID, "spend_reject", "plan", key="spend")
    assert spend["images"] == IMAGES and spend["items"] == ITEMS and spend["needs_approval"] is True
    assert spend["total"] == f"{ESTIMATE:.2f}"
    assert question["subject"] == f"Approve CNY {ESTIMATE:,.2f} for 8 images? ({DAG_ID}, spend_reject)"
    assert f"**Estimated spend: CNY {ESTIMATE:,.2f}**" in question["body"]
    assert f"Catalog items: {ITEMS}; to submit: 5;" in question["body"]
    assert f"/dags/{DAG_ID}/runs/spend_reject/tasks/plan" in question["body"]
    assert question["options"] == ["Approve", "Reject"] and question["response_received"] is False

    # (c) meanwhile: max_cost CNY 1 is below the estimate, so plan fails at once, and so does the
    # run: finalize, its leaf, fails with the same sentence.
    assert airflow.wait_for_run(DAG_ID, "spend_over_limit", timeout=120) == "failed"
    assert airflow.ti_state(DAG_ID, "spend_over_limit", "finalize") == "failed"
    plan = airflow.ti(DAG_ID, "spend_over_limit", "plan")
    assert plan is not None and plan["state"] == "failed" and plan["try_number"] == 1
    reason = summary(over)["reason"]
    assert f"CNY {ESTIMATE:,.2f}" in reason and "max_cost CNY 1.00" in reason and reason.count(". ") == 0
    assert airflow.ti_state(DAG_ID, "spend_over_limit", APPROVE) == "upstream_failed"
    assert since(emulator, before) == {} and images_on_disk(over) == []

    # (a) Reject through the REST API: the refinement is skipped, the run ends without paying
    answered = answer(airflow, "spend_reject", "Reject")
    assert answered["responded_by"]["name"] == USERNAME
    assert airflow.wait_for_run(DAG_ID, "spend_reject", timeout=120) == "success"
    states = airflow.task_states(DAG_ID, "spend_reject")
    assert (states[APPROVE], states["refine_chunk"], states["finalize"]) == ("success", "skipped", "success")
    assert airflow.xcom(DAG_ID, "spend_reject", APPROVE) == {
        "approved": False,
        "by": USERNAME,
        "total": f"{ESTIMATE:.2f}",
        "currency": "CNY",
    }
    assert since(emulator, before) == {}
    assert images_on_disk(shared) == []
    assert summary(shared)["status"] == "rejected"


def test_b_approved_pays_the_estimate_and_d_below_approve_above_is_not_asked(airflow, emulator, catalog, outputs):
    shared, small = outputs / "shared", outputs / "small"  # shared: the partition (a) rejected
    before = submits(emulator)
    trigger(airflow, "spend_approve", 7, conf(catalog, shared, approve_above=0))
    trigger(airflow, "spend_small", 8, conf(catalog, small, approve_above=100, max_cost=50))

    # (b) waits for its answer while (d) runs through without a question
    question = wait_for_question(airflow, "spend_approve")
    assert f"**Estimated spend: CNY {ESTIMATE:,.2f}**" in question["body"]
    assert airflow.wait_for_run(DAG_ID, "spend_small", timeout=150) == "success"
    assert airflow.xcom(DAG_ID, "spend_small", APPROVE) == {
        "approved": True,
        "by": "auto",
        "total": f"{ESTIMATE:.2f}",
        "currency": "CNY",
    }
    assert airflow.api("GET", hitl_path("spend_small")).status_code == 404  # no question was asked
    listed = airflow.api("GET", f"/dags/{DAG_ID}/dagRuns/spend_small/hitlDetails").json()
    assert listed["total_entries"] == 0
    assert since(emulator, before) == IMAGES  # (d)'s images only: (b) still waits
    assert len(images_on_disk(small)) == 5

    # (b) Approve: exactly the estimated images, per model
    before_b = submits(emulator)
    spend = airflow.xcom(DAG_ID, "spend_approve", "plan", key="spend")
    assert spend["images"] == IMAGES and spend["reused"] == 0
    answer(airflow, "spend_approve", "Approve")
    assert airflow.wait_for_run(DAG_ID, "spend_approve", timeout=150) == "success"
    assert airflow.xcom(DAG_ID, "spend_approve", APPROVE)["approved"] is True
    assert since(emulator, before_b) == spend["images"]
    rows = [json.loads(line) for line in (shared / "manifest.jsonl").read_text().splitlines()]
    succeeded = [row for row in rows if row["status"] == "succeeded"]
    assert len(succeeded) == 5
    assert all(Path(row["image"]).is_file() for row in succeeded)
    assert len(images_on_disk(shared)) == 5
    # What the run was charged, and its review gallery, linked from finalize in the UI.
    final = airflow.xcom(DAG_ID, "spend_approve", "finalize")
    assert final["charged"]["images"] == IMAGES and final["status"] == "finished"
    assert final["report"] == str(shared / "report.html") and (shared / "report.html").is_file()
    link = airflow.xcom(DAG_ID, "spend_approve", "finalize", key="_link_ReviewGalleryLink")
    assert link == (shared / "report.html").as_uri()
