"""SpendApprovalOperator: ask a person before a catalog run pays for more than ``approve_above``.

The backfill's ``plan`` task prices a partition before anything is submitted and pushes a spend
dict (the estimate, what it counts, ``needs_approval``). This operator reads it: below the
threshold it approves at once without asking anyone; above it, it asks through Airflow's
human-in-the-loop ``ApprovalOperator`` with a subject and a Markdown body built from the estimate.
On Reject the standard provider skips the direct downstream tasks (nothing is submitted), and this
task returns ``{"approved": False, ...}`` for the run's summary.

With an apache-airflow-providers-standard that has no (recent) ApprovalOperator, the class is a
plain BaseOperator with the same arguments: it still auto-approves small estimates and fails, in
one sentence naming the upgrade, when it would have to ask (see `compat.HITL_APPROVAL`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

from airflow.sdk import BaseOperator

from airflow_provider_aitryon import compat
from airflow_provider_aitryon.compat import DownstreamTasksSkipped
from airflow_provider_aitryon.errors import DashScopeConfigError
from airflow_provider_aitryon.failures import AirflowFailException, airflow_errors

if TYPE_CHECKING:
    from airflow.sdk import Context


class _NoHITLApproval(BaseOperator):
    """ApprovalOperator's arguments on a BaseOperator, for a standard provider without HITL.

    Keeps what a DAG passes, so the same DAG file parses everywhere; ``execute`` is the subclass's,
    which never asks anyone here.
    """

    APPROVE = "Approve"
    REJECT = "Reject"
    template_fields: Sequence[str] = ("subject", "body")

    def __init__(
        self,
        *,
        subject: str,
        body: str | None = None,
        defaults: str | list[str] | None = None,
        notifiers: Any = None,
        assigned_users: Any = None,
        response_timeout: timedelta | None = None,
        ignore_downstream_trigger_rules: bool = False,
        fail_on_reject: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.subject = subject
        self.body = body
        self.defaults = [defaults] if isinstance(defaults, str) else defaults
        self.notifiers = notifiers
        self.assigned_users = [assigned_users] if isinstance(assigned_users, dict) else assigned_users
        self.response_timeout = response_timeout
        self.ignore_downstream_trigger_rules = ignore_downstream_trigger_rules
        self.fail_on_reject = fail_on_reject

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        """Never called: this class never waits for an answer."""
        return event


if TYPE_CHECKING:
    from airflow.providers.standard.operators.hitl import ApprovalOperator as _ApprovalBase
else:
    # The standard provider's ApprovalOperator where it is recent enough (compat.HITL_APPROVAL).
    _ApprovalBase = compat.HITL_APPROVAL_OPERATOR or _NoHITLApproval

__all__ = ["SpendApprovalOperator"]

_DEFAULT_SUBJECT = "Approve the estimated spend of this catalog run?"
_SPEND_HINT = "pass plan's output['spend']"


class SpendApprovalOperator(_ApprovalBase):
    """Approve a catalog run's estimated spend: at once below ``approve_above``, else by a person.

    Returns ``{"approved": bool, "by": str, "total": str, "currency": str}``: ``by`` is ``"auto"``
    when no one was asked, else the name (or id) of the user who answered, or ``"timeout
    default"`` when ``response_timeout`` passed and ``defaults`` answered. On Reject the direct
    downstream tasks are skipped (the standard provider's ApprovalOperator does that) and the task
    itself succeeds.

    :param spend: the plan task's spend dict (templated): an XComArg of the plan task's ``spend``,
        ``plan_result["spend"]`` of a ``multiple_outputs`` task or ``XComArg(plan, key="spend")``;
        ``total``, ``currency``, ``needs_approval``, and for the message ``images``, ``lines``,
        ``items``, ``to_submit``, ``reused``, ``max_cost``, ``approve_above`` and ``plan``.
    :param plan_task_id: the task the body links to in the Airflow UI (the one that wrote the plan).
    :param subject: the question's headline; default: the amount, the image count, the DAG and run.
    :param body: the question's Markdown text; default: the estimate per model, the counts, the
        limits, the plan's URI and a link to the plan task.
    :param response_timeout: how long to wait for an answer; then ``defaults`` answers, or, without
        defaults, the task fails (nothing is submitted either way unless the answer is Approve).
    :param defaults: the answer taken at ``response_timeout`` (``"Approve"`` or ``"Reject"``).
    :param assigned_users: who may answer (``{"id": ..., "name": ...}`` or a list of them).
    :param notifiers: notifiers called when the question is asked (e.g. to mail the approvers).
    :param kwargs: everything else ApprovalOperator and BaseOperator take (``fail_on_reject``,
        ``ignore_downstream_trigger_rules``, ``task_id``, ...).
    """

    template_fields: Sequence[str] = ("subject", "body", "spend")
    ui_color = "#fff3c4"

    def __init__(
        self,
        *,
        spend: Any,
        plan_task_id: str = "plan",
        subject: str | None = None,
        body: str | None = None,
        response_timeout: timedelta | None = None,
        defaults: str | list[str] | None = None,
        assigned_users: Any = None,
        notifiers: Any = None,
        **kwargs: Any,
    ) -> None:
        # ApprovalOperator needs a subject when it is built; the real one needs the rendered spend.
        super().__init__(
            subject=subject or _DEFAULT_SUBJECT,
            body=body,
            response_timeout=response_timeout,
            defaults=defaults,
            assigned_users=assigned_users,
            notifiers=notifiers,
            **kwargs,
        )
        self.spend = spend
        self.plan_task_id = plan_task_id
        self._own_subject = subject is None
        self._own_body = body is None

    # ------------------------------------------------------------------ Airflow entry points

    def execute(self, context: Context) -> Any:
        """Approve without asking when the estimate does not need it; else ask (or fail without HITL).

        :param context: the task's context.
        """
        with airflow_errors():
            spend = checked_spend(self.spend)
        total, currency = _amount(spend["total"]), spend.get("currency") or "CNY"
        if not spend["needs_approval"]:
            limit = spend.get("approve_above")
            if limit is None:
                self.log.info(f"Estimate {currency} {total}: no approve_above is set: approved without asking.")
            else:
                self.log.info(
                    f"Estimate {currency} {total} is within approve_above {currency} {_amount(limit)}: "
                    "approved without asking."
                )
            return self._result(spend, approved=True, by="auto")
        if not compat.HITL_APPROVAL:
            raise AirflowFailException(
                f"Estimate {currency} {total} is above approve_above {currency} {_amount(spend.get('approve_above'))} "
                "and needs a person's approval, but the installed apache-airflow-providers-standard has no "
                "human-in-the-loop ApprovalOperator; upgrade apache-airflow-providers-standard to "
                f"{compat.HITL_MIN_STANDARD} or newer for the human-in-the-loop ApprovalOperator, "
                "or raise approve_above."
            )
        ti = context["ti"]
        if self._own_subject:
            self.subject = spend_subject(spend, dag_id=ti.dag_id, run_id=ti.run_id)
        if self._own_body:
            self.body = spend_body(spend, link=plan_task_link(ti.dag_id, ti.run_id, self.plan_task_id))
        self.log.info(f"Estimate {currency} {total} needs approval; asking: {self.subject}")
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Record the answer; on Reject the standard provider skips the direct downstream tasks.

        :param context: the task's context.
        :param event: the human-in-the-loop response (chosen option, who answered, when).
        """
        with airflow_errors():
            spend = checked_spend(self.spend)
        self.validate_chosen_options(list(event.get("chosen_options") or []))  # before anything is said
        approved = list(event.get("chosen_options") or []) == [self.APPROVE]
        user = event.get("responded_by_user") or event.get("responded_by")
        if isinstance(user, Mapping):
            by = str(user.get("name") or user.get("id") or "unknown user")
        elif user:
            by = str(user)
        else:  # the scheduler applied ``defaults`` at response_timeout
            by = "timeout default"
        result = self._result(spend, approved=approved, by=by)
        verdict = "approved" if approved else "rejected"
        self.log.info(f"Estimate {result['currency']} {_amount(spend['total'])} {verdict} by {by}.")
        try:
            super().execute_complete(context=context, event=event)  # on Reject: skips the direct downstream
        except DownstreamTasksSkipped:
            # Airflow 3 skips downstream tasks by raising this; the task then succeeds without
            # pushing a return value, and finalize must still read that the spend was rejected.
            context["ti"].xcom_push(key="return_value", value=result)
            raise
        return result

    @staticmethod
    def _result(spend: Mapping[str, Any], *, approved: bool, by: str) -> dict[str, Any]:
        return {
            "approved": approved,
            "by": by,
            "total": str(spend["total"]),
            "currency": spend.get("currency") or "CNY",
        }


# ---------------------------------------------------------------------- the message


def checked_spend(spend: Any) -> Mapping[str, Any]:
    """The spend dict if it has a usable ``total`` and ``needs_approval``; else DashScopeConfigError.

    :param spend: what the ``spend`` argument rendered to.
    """
    shown = repr(spend)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    if not isinstance(spend, Mapping) or "total" not in spend or "needs_approval" not in spend:
        raise DashScopeConfigError(
            "spend must be the plan task's spend XCom (a dict with total and needs_approval), "
            f"got {shown}; {_SPEND_HINT}."
        )
    if not isinstance(spend["needs_approval"], bool):
        raise DashScopeConfigError(
            f"spend['needs_approval'] must be true or false, got {spend['needs_approval']!r}; {_SPEND_HINT}."
        )
    try:
        _decimal(spend["total"])
    except (InvalidOperation, TypeError, ValueError):
        raise DashScopeConfigError(
            f"spend['total'] must be an amount like '40.00', got {spend['total']!r}; {_SPEND_HINT}."
        ) from None
    return spend


def _decimal(value: Any) -> Decimal:
    number = Decimal(str(value))
    if not number.is_finite():
        raise ValueError(value)
    return number


def _amount(value: Any) -> str:
    """``1234.5`` or ``"1234.50"`` as ``1,234.50``; None as ``none``; anything else as given.

    Only ``total`` is checked (`checked_spend`): a message must not fail on an odd limit.
    """
    if value is None:
        return "none"
    try:
        return f"{_decimal(value):,.2f}"
    except (InvalidOperation, TypeError, ValueError):
        return str(value)


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "?"


def _images(spend: Mapping[str, Any]) -> int:
    images = spend.get("images")
    if isinstance(images, Mapping):
        return sum(n for n in images.values() if isinstance(n, int))
    return 0


def spend_subject(spend: Mapping[str, Any], *, dag_id: str, run_id: str) -> str:
    """``Approve CNY 1,234.50 for 4,000 images? (<dag_id>, <run_id>)``.

    :param spend: a checked spend dict.
    :param dag_id: the run's DAG.
    :param run_id: the run.
    """
    currency = spend.get("currency") or "CNY"
    return f"Approve {currency} {_amount(spend['total'])} for {_images(spend):,} images? ({dag_id}, {run_id})"


def spend_body(spend: Mapping[str, Any], *, link: str | None) -> str:
    """The Markdown the approver reads: estimate, per-model lines, counts, limits, plan, link.

    :param spend: a checked spend dict.
    :param link: URL of the plan task in the Airflow UI, or None to leave it out.
    """
    currency = spend.get("currency") or "CNY"
    out = [
        f"**Estimated spend: {currency} {_amount(spend['total'])}** (list price) for {_images(spend):,} images.",
        "",
        f"| Model | Images | Unit price ({currency}) | Cost ({currency}) |",
        "|---|---:|---|---:|",
    ]
    for line in spend.get("lines") or []:
        if not isinstance(line, Mapping):
            continue
        charges = [c for c in line.get("charges") or [] if isinstance(c, Mapping)]
        prices = " + ".join(f"{_count(c.get('images'))} at {_amount(c.get('unit_price'))}" for c in charges)
        out.append(
            f"| {_cell(line.get('model'))} | {_count(line.get('images'))} | {prices or '?'} | "
            f"{_amount(line.get('cost'))} |"
        )
    limit, ask = spend.get("max_cost"), spend.get("approve_above")
    out += [
        "",
        f"- Catalog items: {_count(spend.get('items'))}; to submit: {_count(spend.get('to_submit'))}; "
        f"reused (already paid for or done, not in the estimate): {_count(spend.get('reused'))}",
        "- max_cost: " + (f"{currency} {_amount(limit)} (the plan fails above it)" if limit is not None else "none"),
        "- approve_above: "
        + (f"{currency} {_amount(ask)} (estimates above it are asked for)" if ask is not None else "none"),
    ]
    if spend.get("plan"):
        out.append(f"- Plan: `{safe_uri(str(spend['plan']))}`")
    if link:
        out.append(f"- [The plan task in Airflow]({link})")
    out += [
        "",
        "Approve to submit the partition's tasks. Reject to submit nothing: the refinement is skipped "
        "and the run ends without paying.",
    ]
    return "\n".join(out)


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ") if value is not None else "?"


def safe_uri(uri: str) -> str:
    """A URI without credentials, query or fragment (signed URLs carry their secret there).

    :param uri: a local path or a URI.
    """
    parts = urlsplit(uri)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path, "", "")).replace("`", "%60")


def plan_task_link(dag_id: str, run_id: str, task_id: str) -> str | None:
    """The plan task's page in the Airflow UI, from ``[api] base_url``; None when that is not set.

    Like HITLOperator.generate_link_to_ui, but for another task of the run, and keeping a path
    prefix of base_url (a UI behind a reverse proxy). Never fails: the link is a convenience.

    :param dag_id: the DAG.
    :param run_id: the run.
    :param task_id: the task to link to.
    """
    try:
        from airflow.sdk.configuration import conf
    except ImportError:  # Airflow 3.1
        from airflow.configuration import conf
    try:
        base_url = conf.get("api", "base_url", fallback=None)
    except Exception:  # a broken config must not stop the question from being asked
        return None
    if not base_url:
        return None
    parts = urlsplit(str(base_url))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    host = parts.netloc.rsplit("@", 1)[-1]
    dag, run, task = (quote(part, safe="") for part in (dag_id, run_id, task_id))
    path = f"{parts.path.rstrip('/')}/dags/{dag}/runs/{run}/tasks/{task}"
    return urlunsplit((parts.scheme, host, path, "", ""))
