"""What a run will pay before it pays, the limits it must stay within, and what it was charged.

The prices come from the one price table (`airflow_provider_aitryon.pricing`); this module turns
image counts into the three figures a merchandising team acts on:

* the **estimate** of a catalog partition's run, made by ``plan`` before anything is submitted:
  only images this run may pay for (items already paid for and reusable are excluded);
* the **limits**: ``max_cost`` fails a run whose estimate is above it before anything is paid,
  ``approve_above`` makes it wait for a person (`operators.approval.SpendApprovalOperator`);
* the **charged** cost of a run: its successful tasks by model, priced at the tier they reach.

Every amount is a ``Decimal`` in CNY and travels as a string (XCom, manifest summary, asset event),
so no precision is lost on the way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from airflow_provider_aitryon.errors import DashScopeConfigError
from airflow_provider_aitryon.pricing import CostEstimate, estimate_cost

SPEND_FIELDS = ("max_cost", "approve_above")


class SpendLimitExceeded(DashScopeConfigError):
    """The run's estimate is above ``max_cost``: nothing was submitted, and a retry would not help."""


def amount(value: object, *, field_name: str, where: str = "") -> Decimal | None:
    """A CNY amount from a DAG param or a connection extra: None when unset (None or blank).

    :param value: a number or a numeric string, e.g. ``500`` or ``"1234.50"``.
    :param field_name: the param or extra it came from, for the message.
    :param where: where the field was set, e.g. "Connection 'dashscope_default' extra field", for the message.
    :raises DashScopeConfigError: not a number, or negative, in one sentence.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        if isinstance(value, bool):
            raise InvalidOperation
        number = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        number = None
    if number is None or not number.is_finite() or number < 0:
        place = f"{where} {field_name}" if where else field_name
        raise DashScopeConfigError(
            f"{place} must be an amount in CNY of 0 or more (such as 500 or 1234.50), got {value!r}; fix it or leave "
            "it empty for no limit."
        )
    return number


@dataclass(frozen=True)
class SpendLimits:
    """The run's spending limit and approval threshold, in CNY; None means none.

    :param max_cost: a run whose estimate is above this fails before paying anything.
    :param approve_above: a run whose estimate is above this waits for a person's approval.
    """

    max_cost: Decimal | None = None
    approve_above: Decimal | None = None

    @classmethod
    def resolve(cls, params: Mapping[str, Any], defaults: SpendLimits | None = None) -> SpendLimits:
        """A DAG run's limits: its params where set, else the connection's extras (``defaults``).

        :param params: the run's params (``max_cost``, ``approve_above``; None or absent = not set).
        :param defaults: the connection's limits (`ConnectionSettings.spend_limits`).
        """
        base = defaults or cls()
        given = {name: amount(params.get(name), field_name=name, where="DAG param") for name in SPEND_FIELDS}
        return cls(
            max_cost=given["max_cost"] if given["max_cost"] is not None else base.max_cost,
            approve_above=given["approve_above"] if given["approve_above"] is not None else base.approve_above,
        )

    def needs_approval(self, total: Decimal) -> bool:
        return self.approve_above is not None and total > self.approve_above


@dataclass(frozen=True)
class SpendPlan:
    """What a partition's run will pay for, decided before anything is submitted.

    :param items: catalog items in the partition (unusable lines included).
    :param to_submit: items this run will submit at least one task for.
    :param reused: items finished without paying again: a paid task in flight or not yet saved is
        collected, and items already succeeded are skipped. Items failed for good are in neither.
    :param images: images this run may pay for, by model (a lost submit reply counts: it may
        not be found, so the estimate is a ceiling).
    :param limits: the run's limits.
    """

    items: int
    to_submit: int
    reused: int
    images: Mapping[str, int]
    limits: SpendLimits = field(default_factory=SpendLimits)

    @property
    def estimate(self) -> CostEstimate:
        return estimate_cost({model: n for model, n in self.images.items() if n})

    @property
    def needs_approval(self) -> bool:
        return self.limits.needs_approval(self.estimate.total)

    @property
    def text(self) -> str:
        images = sum(self.images.values())
        estimate = self.estimate
        by_model = ", ".join(f"{line.images:,} {line.model}" for line in estimate.lines) or "none"
        return (
            f"{self.to_submit:,} of {self.items:,} items need paid work ({self.reused:,} reuse what is already "
            f"paid for): {images:,} images ({by_model}), estimated {estimate.currency} {estimate.total:,.2f}"
        )

    def check_limit(self) -> None:
        """Fail before paying anything when the estimate is above ``max_cost``.

        :raises SpendLimitExceeded: in one sentence with the estimate and the limit.
        """
        total, limit = self.estimate.total, self.limits.max_cost
        if limit is not None and total > limit:
            raise SpendLimitExceeded(
                f"This run would pay for {sum(self.images.values()):,} images, estimated CNY {total:,.2f}, above "
                f"max_cost CNY {limit:,.2f}; nothing was submitted: raise max_cost, or split the catalog."
            )

    def to_dict(self, plan_uri: str | None = None) -> dict[str, Any]:
        """JSON-safe, for XCom, the manifest summary and the approval (amounts as strings)."""
        estimate = self.estimate.to_dict()
        return {
            "items": self.items,
            "to_submit": self.to_submit,
            "reused": self.reused,
            "images": dict(self.images),
            "currency": estimate["currency"],
            "total": estimate["total"],
            "lines": estimate["lines"],
            "max_cost": _text(self.limits.max_cost),
            "approve_above": _text(self.limits.approve_above),
            "needs_approval": self.needs_approval,
            "plan": plan_uri,
            "text": self.text,
        }


def charged(images: Mapping[str, int]) -> dict[str, Any]:
    """The cost of successful tasks (DashScope charges those only), by model at the tier they reach.

    One shape for every report: the catalog's finalize and the pipeline's ``report_cost``.

    :param images: successful images by model, e.g. ``{"aitryon": 1, "aitryon-refiner": 1}``.
    :returns: ``{"images": {...}, "currency": "CNY", "total": "0.50", "lines": [...]}``, each line
        with its tier charges (images at a unit price).
    """
    counts = {model: int(n) for model, n in images.items() if n}
    estimate = estimate_cost(counts).to_dict()
    return {"images": counts, "currency": estimate["currency"], "total": estimate["total"], "lines": estimate["lines"]}


def unit_costs(cost: Mapping[str, Any]) -> dict[str, Decimal]:
    """Each model's average price per image in a `charged` (or estimate) dict: an item's share of it.

    :param cost: what `charged` returned.
    """
    out = {}
    for line in cost.get("lines", []):
        if line.get("images"):
            out[line["model"]] = (Decimal(line["cost"]) / line["images"]).quantize(Decimal("0.0001"))
    return out


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)
