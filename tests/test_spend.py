"""Spend: the estimate plan makes before paying, the limits it is checked against, what a run was charged."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_aitryon import api
from airflow_provider_aitryon.catalog import (
    STAGE_COARSE,
    STAGE_REFINE,
    CatalogItem,
    manifest_uri,
    partition_lease,
    plan_partition,
    read_summary,
    write_rows,
)
from airflow_provider_aitryon.catalog.finalize import OVER_LIMIT, REJECTED, finalize_partition
from airflow_provider_aitryon.connection import ConnectionSettings
from airflow_provider_aitryon.errors import DashScopeConfigError
from airflow_provider_aitryon.registry import Submission, item_key, partition_registry
from airflow_provider_aitryon.registry.stores import FileStore
from airflow_provider_aitryon.spend import SpendLimitExceeded, SpendLimits, SpendPlan, amount, charged, unit_costs

IMG = "https://images.example.com/{}.png"
RUN = "aitryon_catalog_backfill/run-1"


def item(sku: str, *, coarse: bool = False) -> dict[str, Any]:
    line = {"sku": sku, "person_image_url": IMG.format("person"), "top_garment_url": IMG.format("top"),
            "gender": "woman"}  # fmt: skip
    if coarse:
        line["coarse_image_url"] = IMG.format(f"coarse-{sku}")
    return line


def write_catalog(path: Path, lines: list[dict[str, Any] | str]) -> str:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return str(path)


def record(output: Path, line: dict[str, Any], stage: str, *, owner: str = RUN, coarse_url: str | None = None,
           **fields: Any) -> None:  # fmt: skip
    """Put an item's registry entry for one stage, as the scheduler would have left it."""
    sku_item = CatalogItem(**line)
    call = sku_item.call(stage, coarse_image_url=coarse_url)
    entry = Submission(scope=f"{output} sku {sku_item.sku} {stage}", fingerprint=call.fingerprint(),
                       model=call.body["model"], owner=owner, **fields)  # fmt: skip
    partition_registry(str(output)).put(item_key(sku_item.sku, stage), entry)


# ------------------------------------------------------------------------------ amounts and limits


@pytest.mark.parametrize(
    "value, want",
    [(None, None), ("", None), ("  ", None), (0, Decimal(0)), ("12.50", Decimal("12.50")), (300, Decimal(300))],
)
def test_amounts_parse_and_blank_means_no_limit(value, want):
    assert amount(value, field_name="max_cost") == want


@pytest.mark.parametrize("value", [-1, "abc", "NaN", "inf", True, [1]])
def test_a_bad_amount_is_one_sentence_naming_the_field(value):
    with pytest.raises(DashScopeConfigError) as caught:
        amount(value, field_name="max_cost", where="DAG param")
    message = str(caught.value)
    assert message.startswith("DAG param max_cost must be an amount in CNY") and message.count(". ") == 0


def test_run_params_win_over_the_connections_limits():
    defaults = SpendLimits(max_cost=Decimal(1000), approve_above=Decimal(100))
    assert SpendLimits.resolve({}, defaults) == defaults
    assert SpendLimits.resolve({"max_cost": None, "approve_above": ""}, defaults) == defaults
    assert SpendLimits.resolve({"max_cost": 50, "approve_above": 0}, defaults) == SpendLimits(Decimal(50), Decimal(0))
    assert SpendLimits.resolve({}) == SpendLimits()


def test_the_connection_extras_carry_default_limits():
    class Conn:
        conn_id, password, host, port = "dashscope_default", "sk-x", "", None
        extra = json.dumps({"max_cost": "2500", "approve_above": None})
        extra_dejson = json.loads(extra)

    settings = ConnectionSettings.from_connection(Conn())
    assert settings.spend_limits == SpendLimits(max_cost=Decimal(2500), approve_above=None)
    Conn.extra_dejson = {"max_cost": "lots"}
    Conn.extra = json.dumps(Conn.extra_dejson)
    with pytest.raises(DashScopeConfigError, match="Connection 'dashscope_default' extra field max_cost must be"):
        ConnectionSettings.from_connection(Conn())


def test_the_limit_is_checked_against_the_estimate():
    plan = SpendPlan(items=10, to_submit=10, reused=0, images={"aitryon": 10, "aitryon-refiner": 10},
                     limits=SpendLimits(max_cost=Decimal("4.99"), approve_above=Decimal("4")))  # fmt: skip
    assert plan.estimate.total == Decimal("5.00") and plan.needs_approval
    with pytest.raises(SpendLimitExceeded) as caught:
        plan.check_limit()
    assert str(caught.value) == (
        "This run would pay for 20 images, estimated CNY 5.00, above max_cost CNY 4.99; nothing was submitted: "
        "raise max_cost, or split the catalog."
    )
    at_limit = SpendPlan(10, 10, 0, {"aitryon": 10, "aitryon-refiner": 10}, SpendLimits(max_cost=Decimal(5)))
    at_limit.check_limit()  # equal is within the limit
    assert not at_limit.needs_approval  # no approve_above: never asks
    assert not SpendPlan(1, 1, 0, {"aitryon-refiner": 1}, SpendLimits(approve_above=Decimal("0.30"))).needs_approval


def test_the_spend_dict_is_json_safe_and_exact():
    plan = SpendPlan(3, 2, 1, {"aitryon": 1, "aitryon-refiner": 2}, SpendLimits(approve_above=Decimal("0.5")))
    data = json.loads(json.dumps(plan.to_dict("/out/summary.json")))
    assert data["total"] == "0.80" and data["currency"] == "CNY" and data["needs_approval"] is True
    assert data["approve_above"] == "0.5" and data["max_cost"] is None and data["plan"] == "/out/summary.json"
    assert data["text"].startswith("2 of 3 items need paid work (1 reuse what is already paid for): 3 images")


def test_charged_prices_successful_images_at_their_tier():
    cost = charged({"aitryon-refiner": 10_002, "aitryon": 0})
    assert cost["images"] == {"aitryon-refiner": 10_002}
    assert cost["total"] == str(Decimal("0.30") * 10_000 + Decimal("0.25") * 2)
    tiers = [{"images": 10_000, "unit_price": "0.30"}, {"images": 2, "unit_price": "0.25"}]
    assert cost["lines"][0]["charges"] == tiers
    assert unit_costs(cost) == {"aitryon-refiner": Decimal("0.3000")}
    assert charged({}) == {"images": {}, "currency": "CNY", "total": "0", "lines": []}


# ------------------------------------------------------------------------------ plan prices only unpaid work


def test_plan_prices_only_the_stages_no_paid_task_covers(tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    lines = {
        "fresh": item("fresh"),  # coarse + refine
        "fresh-with-coarse": item("fresh-with-coarse", coarse=True),  # refine
        "coarse-running": item("coarse-running"),  # coarse paid, in flight: refine only
        "coarse-done": item("coarse-done"),  # coarse paid: refine only
        "refine-running": item("refine-running", coarse=True),  # paid, in flight: nothing
        "refine-unsaved": item("refine-unsaved", coarse=True),  # succeeded, not saved yet: nothing
        "lost-reply": item("lost-reply", coarse=True),  # intent without task id: counted (ceiling)
        "refine-failed": item("refine-failed", coarse=True),  # transient failure: refine again
        "invalid-person": item("invalid-person", coarse=True),  # failed for good: nothing
        "done": item("done", coarse=True),  # in the manifest as succeeded: nothing
    }
    catalog = write_catalog(tmp_path / "c.jsonl", [*lines.values(), "{not json"])
    now = time.time()
    record(output, lines["coarse-running"], STAGE_COARSE, task_id="t1", status="RUNNING", submitted_at=now)
    coarse_url = "https://dashscope-result.example.com/c.png?Expires=1&Signature=abc"
    record(output, lines["coarse-done"], STAGE_COARSE, task_id="t2", status="SUCCEEDED", image_url=coarse_url,
           submitted_at=now)  # fmt: skip
    record(output, lines["refine-running"], STAGE_REFINE, task_id="t3", status="PENDING", submitted_at=now)
    record(output, lines["refine-unsaved"], STAGE_REFINE, task_id="t4", status="SUCCEEDED", image_url=coarse_url,
           submitted_at=now)  # fmt: skip
    record(output, lines["lost-reply"], STAGE_REFINE)
    record(output, lines["refine-failed"], STAGE_REFINE, task_id="t5", status="FAILED", code="InternalError",
           submitted_at=now)  # fmt: skip
    record(output, lines["invalid-person"], STAGE_REFINE, task_id="t6", status="FAILED", code="InvalidPerson",
           submitted_at=now)  # fmt: skip
    write_rows(manifest_uri(str(output)), [{"sku": "done", "status": "succeeded", "t": now}])

    reads: list[str] = []
    original = FileStore.get

    def counting_get(self: FileStore, key: str) -> Any:
        reads.append(key)
        return original(self, key)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FileStore, "get", counting_get)
        planned = plan_partition(catalog, str(output), chunk_size=4, holder=RUN,
                                 limits=SpendLimits(approve_above=Decimal(1)))  # fmt: skip

    spend = planned.spend
    assert dict(spend.images) == {"aitryon": 1, "aitryon-refiner": 6}
    assert (spend.items, spend.to_submit, spend.reused) == (11, 6, 3)  # 2 in flight or unsaved + 1 done
    assert spend.estimate.total == Decimal("2.00") and spend.needs_approval
    # Only the entries that exist were read: one listing, not a read per item and stage.
    assert sorted(set(reads)) == sorted(reads) and len(reads) == 7
    assert len(planned.chunks) == 3  # 9 items still need work (all but done), chunks of 4
    summary = read_summary(str(output))
    assert summary["status"] == "planned" and summary["run"] == RUN
    assert summary["plan"] == json.loads(json.dumps(planned.to_dict()["spend"]))


def test_over_max_cost_the_plan_fails_before_anything_and_gives_the_partition_back(tmp_path):
    output = tmp_path / "out"
    catalog = write_catalog(tmp_path / "c.jsonl", [item(f"sku-{i}") for i in range(4)])  # 4 x 0.50
    with pytest.raises(SpendLimitExceeded, match=r"estimated CNY 2\.00, above max_cost CNY 1\.99"):
        plan_partition(catalog, str(output), holder=RUN, limits=SpendLimits(max_cost=Decimal("1.99")))
    assert not (output / "chunks").exists()  # nothing to refine was written
    summary = read_summary(str(output))
    assert summary["status"] == OVER_LIMIT and "max_cost" in summary["reason"]
    partition_lease(str(output), "another/run").acquire()  # the lease was given back
    # finalize of that run has nothing to do.
    assert finalize_partition(catalog, str(output), holder=RUN)["status"] == OVER_LIMIT


# ------------------------------------------------------------------------------ finalize: charged per run


def test_finalize_charges_this_run_for_its_own_successful_tasks_only(tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    lines = [item("a", coarse=True), item("b"), item("c", coarse=True)]
    catalog = write_catalog(tmp_path / "c.jsonl", lines)
    now = time.time()
    rows = [
        {"sku": "a", "status": "succeeded", "charged": {"aitryon-refiner": "earlier/run"}, "t": now},
        {"sku": "b", "status": "succeeded", "charged": {"aitryon": RUN, "aitryon-refiner": RUN}, "t": now},
        {"sku": "c", "status": "failed", "code": "InvalidPerson", "message": "no person", "retryable": False,
         "charged": {}, "t": now},
    ]  # fmt: skip
    write_rows(manifest_uri(str(output)), rows)
    summary = finalize_partition(catalog, str(output), holder=RUN, review=False)
    assert summary["charged"]["images"] == {"aitryon": 1, "aitryon-refiner": 1}
    assert summary["charged"]["total"] == "0.50"
    assert summary["partition_charged"]["images"] == {"aitryon": 1, "aitryon-refiner": 2}
    assert (summary["items"], summary["succeeded"], summary["failed"], summary["undone"]) == (3, 2, 1, 0)
    assert json.loads((output / "summary.json").read_text())["charged"] == summary["charged"]


def test_a_rejected_run_finalizes_quietly_with_its_items_undone(tmp_path):
    output = tmp_path / "out"
    catalog = write_catalog(tmp_path / "c.jsonl", [item("a"), item("b")])
    plan_partition(catalog, str(output), holder=RUN, limits=SpendLimits(approve_above=Decimal(0)))
    summary = finalize_partition(catalog, str(output), holder=RUN, approval={"approved": False, "by": "ana"},
                                 review=False)  # fmt: skip
    assert summary["status"] == REJECTED and summary["undone"] == 2
    assert summary["charged"]["total"] == "0" and summary["approval"] == {"approved": False, "by": "ana"}
    assert summary["plan"]["needs_approval"] is True
    partition_lease(str(output), "another/run").acquire()  # given back


def test_the_refiner_and_coarse_models_are_priced_by_the_one_table():
    assert set(SpendPlan(1, 1, 0, {api.MODEL_TRYON: 1, api.MODEL_REFINER: 1}).to_dict()["images"]) == {
        "aitryon",
        "aitryon-refiner",
    }
