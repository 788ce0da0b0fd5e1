"""List prices of the try-on models, and what a batch will cost before it is submitted.

DashScope charges per successful image, so a duplicate submission is money lost and a backfill of
thousands of images is worth pricing first. Amounts are ``Decimal`` CNY: binary floats would turn
0.30 x 3 into 0.8999999999999999.

What the estimate leaves out: the free quota of new accounts (400 images per model, for a limited
time after activation), discounts and savings plans, and failed tasks (which are free). It is a
list-price ceiling, not an invoice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType
from typing import Any

CURRENCY = "CNY"


@dataclass(frozen=True)
class PriceTier:
    """Images beyond ``from_image`` images billed this month pay ``unit_price`` each."""

    from_image: int
    unit_price: Decimal


# List prices, China (Beijing) site, CNY per successful image.
#
# aitryon and aitryon-plus have one flat price (vendor doc). aitryon-refiner is priced in monthly
# volume tiers: the spec gives only the two ends, 0.30 for the first images of the month and 0.15
# at the highest volume. THE TIER BOUNDARIES AND THE MIDDLE PRICES BELOW ARE AN ASSUMPTION taken
# as a placeholder for the vendor's price page ("AI Try-on OutfitAnyone model billing and
# metering"); check them against the Model Studio console before relying on an estimate near a
# boundary, and edit only this table.
#
#   model             monthly images billed before this one   price per image
#   aitryon           any                                     0.20
#   aitryon-plus      any                                     0.50
#   aitryon-refiner   0 - 9,999                               0.30
#                     10,000 - 49,999                         0.25   (assumed)
#                     50,000 - 99,999                         0.20   (assumed)
#                     100,000 and more                        0.15
PRICE_TABLE: Mapping[str, tuple[PriceTier, ...]] = MappingProxyType(
    {
        "aitryon": (PriceTier(0, Decimal("0.20")),),
        "aitryon-plus": (PriceTier(0, Decimal("0.50")),),
        "aitryon-refiner": (
            PriceTier(0, Decimal("0.30")),
            PriceTier(10_000, Decimal("0.25")),
            PriceTier(50_000, Decimal("0.20")),
            PriceTier(100_000, Decimal("0.15")),
        ),
    }
)
KNOWN_MODELS: tuple[str, ...] = tuple(PRICE_TABLE)


@dataclass(frozen=True)
class TierCharge:
    """Part of a model's images billed at one unit price."""

    images: int
    unit_price: Decimal

    @property
    def cost(self) -> Decimal:
        return self.unit_price * self.images


@dataclass(frozen=True)
class CostLine:
    """One model's share of an estimate, split by price tier."""

    model: str
    images: int
    already_this_month: int
    charges: tuple[TierCharge, ...]

    @property
    def cost(self) -> Decimal:
        return sum((c.cost for c in self.charges), Decimal("0"))


@dataclass(frozen=True)
class CostEstimate:
    """The list-price cost of a batch: one line per model and the total, in CNY."""

    lines: tuple[CostLine, ...]
    currency: str = CURRENCY

    @property
    def total(self) -> Decimal:
        return sum((line.cost for line in self.lines), Decimal("0"))

    def line(self, model: str) -> CostLine:
        for line in self.lines:
            if line.model == model:
                return line
        raise KeyError(model)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe, for XCom: amounts as strings so no precision is lost."""
        return {
            "currency": self.currency,
            "total": str(self.total),
            "lines": [
                {
                    "model": line.model,
                    "images": line.images,
                    "already_this_month": line.already_this_month,
                    "cost": str(line.cost),
                    "charges": [{"images": c.images, "unit_price": str(c.unit_price)} for c in line.charges],
                }
                for line in self.lines
            ],
        }


def unit_price(model: str, *, already_this_month: int = 0) -> Decimal:
    """The price of the next image of ``model`` after ``already_this_month`` billed images."""
    tiers = _tiers(model)
    _check_count("already_this_month", model, already_this_month)
    return next(t.unit_price for t in reversed(tiers) if t.from_image <= already_this_month)


def estimate_cost(counts: Mapping[str, int], *, already_this_month: Mapping[str, int] | None = None) -> CostEstimate:
    """List-price cost of ``counts`` successful images per model.

    Tiers apply incrementally: with ``already_this_month={"aitryon-refiner": 9_990}``, 20 refiner
    images are 10 at the first tier's price and 10 at the second's.

    :param counts: images to price, by model name, e.g. ``{"aitryon": 100, "aitryon-refiner": 100}``.
    :param already_this_month: images of each model already billed this calendar month (see the
        console's usage page); they only move the starting point in the tier table.
    :raises ValueError: an unknown model (the message lists the known ones) or a count that is not
        a non-negative integer.
    """
    offsets = dict(already_this_month or {})
    for model, offset in offsets.items():
        _tiers(model)
        _check_count("already_this_month", model, offset)
    for model, count in counts.items():
        _tiers(model)
        _check_count("counts", model, count)

    lines = []
    # Table order, not input order: the same batch always prints the same way.
    for model in KNOWN_MODELS:
        if model in counts:
            offset = offsets.get(model, 0)
            lines.append(CostLine(model, counts[model], offset, _charges(model, counts[model], offset)))
    return CostEstimate(tuple(lines))


def format_cost(estimate: CostEstimate) -> str:
    """One line per model, then the total, e.g.

    ``aitryon-refiner: 12,000 images = CNY 3,500.00 (10,000 x 0.30 + 2,000 x 0.25)``
    """
    rows = []
    for line in estimate.lines:
        breakdown = " + ".join(f"{c.images:,} x {c.unit_price}" for c in line.charges) or "nothing to bill"
        noun = "image" if line.images == 1 else "images"
        row = f"{line.model}: {line.images:,} {noun} = {estimate.currency} {line.cost:,.2f} ({breakdown})"
        if line.already_this_month:
            row += f", after {line.already_this_month:,} already this month"
        rows.append(row)
    rows.append(f"total: {estimate.currency} {estimate.total:,.2f}")
    return "\n".join(rows)


def _charges(model: str, images: int, offset: int) -> tuple[TierCharge, ...]:
    tiers = _tiers(model)
    charges = []
    position, remaining = offset, images
    for index, tier in enumerate(tiers):
        if remaining == 0:
            break
        upper = tiers[index + 1].from_image if index + 1 < len(tiers) else None
        if upper is not None and position >= upper:
            continue
        in_tier = remaining if upper is None else min(remaining, upper - position)
        charges.append(TierCharge(in_tier, tier.unit_price))
        position += in_tier
        remaining -= in_tier
    return tuple(charges)


def _tiers(model: object) -> tuple[PriceTier, ...]:
    tiers = PRICE_TABLE.get(model) if isinstance(model, str) else None
    if tiers is None:
        raise ValueError(f"unknown model {model!r}; use one of the priced models: {', '.join(KNOWN_MODELS)}.")
    return tiers


def _check_count(field_name: str, model: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
            f"{field_name}[{model!r}] must be a whole number of images (0 or more), got {value!r}; pass an int."
        )
