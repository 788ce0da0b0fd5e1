"""SpendApprovalOperator without a running Airflow: what it decides, asks and returns.

The real operator runs on a minimal context. Where it hands over to Airflow's human-in-the-loop
machinery, only the write of the question to the metadata DB (``upsert_hitl_detail``, which needs
a task supervisor) is recorded instead of sent; the wait itself (``TaskAwaitingInput`` on 3.3,
``TaskDeferred`` before) and the Reject skip are proven in tests/test_real_airflow_spend.py.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from packaging.version import Version

from airflow_provider_aitryon import compat
from airflow_provider_aitryon.failures import AirflowFailException
from airflow_provider_aitryon.operators.approval import (
    SpendApprovalOperator,
    plan_task_link,
    safe_uri,
    spend_body,
    spend_subject,
)

REPO = Path(__file__).resolve().parent.parent
DAG_ID = "aitryon_catalog_backfill"
RUN_ID = "manual__2026-01-05T00:00:00+00:00"

SPEND: dict[str, Any] = {
    "items": 4_120,
    "to_submit": 4_000,
    "reused": 120,
    "images": {"aitryon": 1_000, "aitryon-refiner": 3_000},
    "currency": "CNY",
    "total": "1100.00",
    "lines": [
        {"model": "aitryon", "images": 1_000, "cost": "200.00", "charges": [{"images": 1_000, "unit_price": "0.20"}]},
        {
            "model": "aitryon-refiner",
            "images": 3_000,
            "cost": "900.00",
            "charges": [{"images": 3_000, "unit_price": "0.30"}],
        },
    ],
    "max_cost": "5000",
    "approve_above": "1000",
    "needs_approval": True,
    # A signed URL: its query is the credential and must not reach the approver's page.
    "plan": "https://bucket.example.com/out/2026-01-05/summary.json?OSSAccessKeyId=LTAI5t&Signature=SECRETSIG",
    "text": "4000 of 4120 items need work: 4000 images, estimated CNY 1100.00",
}


class TI:
    """The task instance fields the operator reads; it runs for real on them."""

    dag_id = DAG_ID
    run_id = RUN_ID
    task_id = "approve_spend"
    map_index = -1
    id = "0197a0b4-0000-7000-8000-000000000001"
    try_number = 1


def context() -> dict[str, Any]:
    return {"ti": TI(), "task_instance": TI()}


def spend(**changes: Any) -> dict[str, Any]:
    return {**copy.deepcopy(SPEND), **changes}


def operator(**kwargs: Any) -> SpendApprovalOperator:
    kwargs.setdefault("spend", spend())
    return SpendApprovalOperator(task_id="approve_spend", **kwargs)


@pytest.fixture
def questions(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The HITL questions the operator writes; the write needs a task supervisor, so it is kept here."""
    if not compat.HITL_APPROVAL:
        pytest.skip("needs the standard provider's ApprovalOperator")
    from airflow.providers.standard.operators import hitl

    asked: list[dict[str, Any]] = []
    monkeypatch.setattr(hitl, "upsert_hitl_detail", lambda **kwargs: asked.append(kwargs))
    return asked


def waiting() -> type[BaseException]:
    """What the standard provider raises to hand the task to Airflow's wait for an answer."""
    if Version("3.3") <= compat.AIRFLOW_VERSION:
        from airflow.providers.standard.operators import hitl

        return hitl.TaskAwaitingInput  # type: ignore[no-any-return]  # the task waits in awaiting_input
    return compat.TaskDeferred  # deferred to HITLTrigger


@pytest.fixture
def base_url(monkeypatch: pytest.MonkeyPatch) -> str:
    url = "http://airflow.example.com:8080/"
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", url)
    return url


# ---------------------------------------------------------------------- without asking


@pytest.mark.parametrize(
    ("approve_above", "says"),
    [
        ("1000", "Estimate CNY 40.00 is within approve_above CNY 1,000.00: approved without asking."),
        (None, "Estimate CNY 40.00: no approve_above is set: approved without asking."),
    ],
)
def test_an_estimate_that_needs_no_approval_is_approved_without_asking(questions, capfd, approve_above, says):
    op = operator(spend=spend(total="40.00", needs_approval=False, approve_above=approve_above))

    result = op.execute(context())

    assert result == {"approved": True, "by": "auto", "total": "40.00", "currency": "CNY"}
    assert questions == []  # no HITL question was written, so no one is asked and nothing waits
    out, err = capfd.readouterr()
    assert (out + err).count(says) == 1
    assert op.subject == "Approve the estimated spend of this catalog run?"  # never built: not asked


def test_the_result_is_json_safe(questions):
    result = operator(spend=spend(needs_approval=False)).execute(context())
    assert json.loads(json.dumps(result)) == result


# ---------------------------------------------------------------------- asking


def test_an_estimate_that_needs_approval_asks_with_subject_and_body(questions, base_url):
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    op = operator(defaults="Reject")
    with pytest.raises(waiting()):  # Airflow takes over: the task waits for the answer
        op.execute(context())

    (asked,) = questions
    assert asked["ti_id"] == TI.id
    assert asked["options"] == [ApprovalOperator.APPROVE, ApprovalOperator.REJECT]
    assert asked["defaults"] == ["Reject"]
    assert asked["subject"] == f"Approve CNY 1,100.00 for 4,000 images? ({DAG_ID}, {RUN_ID})"
    body = asked["body"]
    assert "**Estimated spend: CNY 1,100.00** (list price) for 4,000 images." in body
    assert "| aitryon | 1,000 | 1,000 at 0.20 | 200.00 |" in body
    assert "| aitryon-refiner | 3,000 | 3,000 at 0.30 | 900.00 |" in body
    assert "Catalog items: 4,120; to submit: 4,000; reused (already paid for or done, not in the estimate): 120" in body
    assert "- max_cost: CNY 5,000.00 (the plan fails above it)" in body
    assert "- approve_above: CNY 1,000.00 (estimates above it are asked for)" in body
    assert "- Plan: `https://bucket.example.com/out/2026-01-05/summary.json`" in body
    link = f"http://airflow.example.com:8080/dags/{DAG_ID}/runs/manual__2026-01-05T00%3A00%3A00%2B00%3A00/tasks/plan"
    assert f"- [The plan task in Airflow]({link})" in body


def test_the_body_carries_no_secret_and_no_query_string(questions, base_url):
    with pytest.raises(waiting()):
        operator().execute(context())
    (asked,) = questions
    for secret in ("SECRETSIG", "OSSAccessKeyId", "LTAI5t"):
        assert secret not in asked["subject"] + asked["body"]
    assert "?" not in asked["body"]  # no query string of any URL


def test_a_subject_and_body_of_the_dags_own_are_kept(questions):
    with pytest.raises(waiting()):
        operator(subject="Spend check", body="See the plan.").execute(context())
    (asked,) = questions
    assert (asked["subject"], asked["body"]) == ("Spend check", "See the plan.")


def test_hitl_arguments_pass_through():
    from datetime import timedelta

    op = operator(
        response_timeout=timedelta(hours=4),
        defaults="Reject",
        assigned_users={"id": "7", "name": "finance"},
        fail_on_reject=True,
    )
    assert op.response_timeout == timedelta(hours=4)
    assert op.defaults == ["Reject"]
    assert op.assigned_users == [{"id": "7", "name": "finance"}]
    assert op.fail_on_reject is True
    assert {"subject", "body", "spend"} <= set(op.template_fields)


def test_spend_from_the_plan_task_is_an_upstream_xcom():
    from airflow.sdk import DAG, task

    with DAG("spend_dag", schedule=None):

        @task(multiple_outputs=True)
        def plan() -> dict[str, Any]:
            return {"chunks": [], "spend": SPEND}

        approve = SpendApprovalOperator(task_id="approve_spend", spend=plan()["spend"])
    assert approve.upstream_task_ids == {"plan"}


# ---------------------------------------------------------------------- the answer


def answer(option: str, user: dict[str, str] | None) -> dict[str, Any]:
    return {
        "chosen_options": [option],
        "params_input": {},
        "responded_at": datetime(2026, 1, 5, 9, 30, tzinfo=timezone.utc),
        "responded_by_user": user,
        "timedout": user is None,
    }


@pytest.mark.parametrize(
    ("option", "user", "expected"),
    [
        ("Approve", {"id": "7", "name": "finance"}, {"approved": True, "by": "finance"}),
        ("Reject", {"id": "7", "name": ""}, {"approved": False, "by": "7"}),
        ("Reject", None, {"approved": False, "by": "timeout default"}),
    ],
)
def test_the_answer_is_returned_with_who_gave_it(capfd, option, user, expected):
    if not compat.HITL_APPROVAL:
        pytest.skip("needs the standard provider's ApprovalOperator")
    op = operator()  # no downstream tasks here: the Reject skip is the real-Airflow test's
    result = op.execute_complete(context(), answer(option, user))
    assert result == {**expected, "total": "1100.00", "currency": "CNY"}
    verdict = "approved" if expected["approved"] else "rejected"
    assert f"Estimate CNY 1,100.00 {verdict} by {expected['by']}." in "".join(capfd.readouterr())


def test_a_reject_skips_the_downstream_and_still_leaves_the_result_for_finalize():
    # Airflow 3 skips downstream tasks by raising DownstreamTasksSkipped, so a return value would
    # never reach XCom: the operator pushes it itself, and finalize reads approved False there.
    if not compat.HITL_APPROVAL:
        pytest.skip("needs the standard provider's ApprovalOperator")
    from airflow.sdk import DAG
    from airflow.sdk.bases.operator import BaseOperator

    class Recorder(TI):
        def __init__(self) -> None:
            self.pushed: dict[str, Any] = {}

        def xcom_push(self, key: str, value: Any) -> None:
            self.pushed[key] = value

    with DAG("spend_dag", schedule=None):
        op = operator()
        op >> BaseOperator(task_id="refine_chunk")
    ti = Recorder()
    with pytest.raises(compat.DownstreamTasksSkipped) as skipped:
        op.execute_complete({"ti": ti, "task_instance": ti, "task": op}, answer("Reject", {"id": "7", "name": "fin"}))
    assert [getattr(t, "task_id", t) for t in skipped.value.tasks] == ["refine_chunk"]
    assert ti.pushed["return_value"] == {"approved": False, "by": "fin", "total": "1100.00", "currency": "CNY"}


def test_an_answer_that_is_not_an_option_fails():
    if not compat.HITL_APPROVAL:
        pytest.skip("needs the standard provider's ApprovalOperator")
    with pytest.raises(ValueError, match="not in"):
        operator().execute_complete(context(), answer("Maybe", {"id": "7", "name": "finance"}))


# ---------------------------------------------------------------------- a bad spend


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "abc",
            "spend must be the plan task's spend XCom (a dict with total and needs_approval), got 'abc'; "
            "pass plan's output['spend'].",
        ),
        (
            ["gs://x/chunk-0001.jsonl"],
            "spend must be the plan task's spend XCom (a dict with total and needs_approval), "
            "got ['gs://x/chunk-0001.jsonl']; pass plan's output['spend'].",
        ),
        (
            {"total": "4.00"},
            "spend must be the plan task's spend XCom (a dict with total and needs_approval), "
            "got {'total': '4.00'}; pass plan's output['spend'].",
        ),
        (
            {"total": "4.00", "needs_approval": "yes"},
            "spend['needs_approval'] must be true or false, got 'yes'; pass plan's output['spend'].",
        ),
        (
            {"total": "lots", "needs_approval": True},
            "spend['total'] must be an amount like '40.00', got 'lots'; pass plan's output['spend'].",
        ),
    ],
)
def test_a_bad_spend_fails_for_good_in_one_sentence(questions, value, message):
    with pytest.raises(AirflowFailException) as caught:
        operator(spend=value).execute(context())
    assert str(caught.value) == message
    assert questions == []


def test_a_long_bad_spend_is_shown_shortened():
    with pytest.raises(AirflowFailException, match=r"got '(x){76}\.\.\.; pass plan's output\['spend'\]\.$"):
        operator(spend="x" * 500).execute(context())


# ---------------------------------------------------------------------- the pieces of the message


def test_the_subject_counts_every_model_and_groups_thousands():
    subject = spend_subject(spend(total=1234.5), dag_id="d", run_id="r")
    assert subject == "Approve CNY 1,234.50 for 4,000 images? (d, r)"


def test_tiered_prices_and_missing_limits_read_plainly():
    tiered = spend(
        lines=[
            {
                "model": "aitryon-refiner",
                "images": 12_000,
                "cost": "3500.00",
                "charges": [{"images": 10_000, "unit_price": "0.30"}, {"images": 2_000, "unit_price": "0.25"}],
            }
        ],
        max_cost=None,
        approve_above=None,
        plan=None,
    )
    body = spend_body(tiered, link=None)
    assert "| aitryon-refiner | 12,000 | 10,000 at 0.30 + 2,000 at 0.25 | 3,500.00 |" in body
    assert "- max_cost: none" in body and "- approve_above: none" in body
    assert "Plan:" not in body and "plan task in Airflow" not in body


@pytest.mark.parametrize(
    ("uri", "safe"),
    [
        ("/data/out/2026-01-05/summary.json", "/data/out/2026-01-05/summary.json"),
        ("s3://bucket/out/summary.json", "s3://bucket/out/summary.json"),
        ("oss://key:secret@bucket/out/summary.json?versionId=3#x", "oss://bucket/out/summary.json"),
        ("https://h/out/summary.json?X-Amz-Signature=abc", "https://h/out/summary.json"),
    ],
)
def test_plan_uris_lose_credentials_and_queries(uri, safe):
    assert safe_uri(uri) == safe


@pytest.mark.parametrize(
    ("configured", "link"),
    [
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080/dags/d/runs/r%2B1/tasks/plan"),
        ("https://ops.example.com/airflow/", "https://ops.example.com/airflow/dags/d/runs/r%2B1/tasks/plan"),
        ("https://user:pw@ops.example.com/?token=1", "https://ops.example.com/dags/d/runs/r%2B1/tasks/plan"),
        ("", None),
        ("not a url", None),
    ],
)
def test_the_plan_link_follows_base_url_and_is_left_out_without_one(monkeypatch, configured, link):
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", configured)
    assert plan_task_link("d", "r+1", "plan") == link


# ---------------------------------------------------------------------- without the HITL operator

# A fresh interpreter in which the standard provider's hitl module cannot be imported (None in
# sys.modules makes every import of it raise ImportError), as with a provider that predates it.
_WITHOUT_HITL = """
import json, sys
sys.modules["airflow.providers.standard.operators.hitl"] = None
from airflow_provider_aitryon import compat
from airflow_provider_aitryon.failures import AirflowFailException
from airflow_provider_aitryon.operators.approval import SpendApprovalOperator
from datetime import timedelta

class TI:
    dag_id, run_id, task_id, map_index, id = "d", "r", "approve_spend", -1, "ti-1"

spend = json.loads(sys.argv[1])
op = SpendApprovalOperator(task_id="approve_spend", spend=spend, response_timeout=timedelta(hours=1),
                           defaults="Reject", assigned_users={"id": "7", "name": "finance"}, notifiers=None,
                           fail_on_reject=False)
out = {"flag": compat.HITL_APPROVAL, "class": compat.HITL_APPROVAL_OPERATOR,
       "bases": [c.__name__ for c in SpendApprovalOperator.__mro__[1:3]],
       "timeout": op.response_timeout.total_seconds(), "defaults": op.defaults}
try:
    out["result"] = op.execute({"ti": TI(), "task_instance": TI()})
except AirflowFailException as exc:
    out["failed"] = str(exc)
print("RESULT " + json.dumps(out))
"""


def run_without_hitl(value: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_HITL, json.dumps(value)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    return {**json.loads(line.removeprefix("RESULT ")), "log": done.stdout + done.stderr}


def test_without_hitl_the_module_imports_and_small_estimates_are_approved():
    out = run_without_hitl(spend(total="4.00", needs_approval=False, approve_above="10"))
    assert out["flag"] is False and out["class"] is None
    assert out["bases"] == ["_NoHITLApproval", "BaseOperator"]
    assert (out["timeout"], out["defaults"]) == (3600.0, ["Reject"])  # the arguments are kept
    assert out["result"] == {"approved": True, "by": "auto", "total": "4.00", "currency": "CNY"}
    assert "Estimate CNY 4.00 is within approve_above CNY 10.00: approved without asking." in out["log"]


def test_without_hitl_an_estimate_that_needs_approval_fails_naming_the_upgrade():
    out = run_without_hitl(spend())
    assert "result" not in out
    assert out["failed"] == (
        "Estimate CNY 1,100.00 is above approve_above CNY 1,000.00 and needs a person's approval, but the "
        "installed apache-airflow-providers-standard has no human-in-the-loop ApprovalOperator; upgrade "
        f"apache-airflow-providers-standard to {compat.HITL_MIN_STANDARD} or newer for the human-in-the-loop "
        "ApprovalOperator, or raise approve_above."
    )
