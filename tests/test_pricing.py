"""Cost estimates: flat prices, refiner tiers applied incrementally, monthly offsets, bad input."""

from __future__ import annotations

from decimal import Decimal

import pytest

from airflow_provider_aitryon.pricing import (
    KNOWN_MODELS,
    PRICE_TABLE,
    CostEstimate,
    estimate_cost,
    format_cost,
    unit_price,
)

D = Decimal
REFINER = "aitryon-refiner"


def refiner_boundaries() -> list[int]:
    return [tier.from_image for tier in PRICE_TABLE[REFINER]]


@pytest.mark.parametrize("model, price", [("aitryon", "0.20"), ("aitryon-plus", "0.50"), (REFINER, "0.30")])
def test_list_price_of_each_model(model: str, price: str) -> None:
    estimate = estimate_cost({model: 1})
    assert estimate.total == D(price)
    assert unit_price(model) == D(price)
    assert isinstance(estimate.total, Decimal)


def test_flat_prices_scale_without_float_error() -> None:
    estimate = estimate_cost({"aitryon": 3, "aitryon-plus": 7})
    assert estimate.line("aitryon").cost == D("0.60")
    assert estimate.line("aitryon-plus").cost == D("3.50")
    assert estimate.total == D("4.10")


def test_refiner_tiers_run_from_030_down_to_015() -> None:
    tiers = PRICE_TABLE[REFINER]
    assert tiers[0].from_image == 0
    assert tiers[0].unit_price == D("0.30")
    assert tiers[-1].unit_price == D("0.15")
    prices = [t.unit_price for t in tiers]
    assert prices == sorted(prices, reverse=True)
    assert refiner_boundaries() == sorted(refiner_boundaries())


def test_refiner_batch_crossing_a_boundary_pays_each_tier_for_its_part() -> None:
    first_boundary = refiner_boundaries()[1]
    second_price = PRICE_TABLE[REFINER][1].unit_price
    estimate = estimate_cost({REFINER: first_boundary + 100})
    line = estimate.line(REFINER)
    assert [(c.images, c.unit_price) for c in line.charges] == [(first_boundary, D("0.30")), (100, second_price)]
    assert estimate.total == D("0.30") * first_boundary + second_price * 100


def test_refiner_batch_spanning_every_tier() -> None:
    boundaries = refiner_boundaries()
    beyond = boundaries[-1] + 1_000
    estimate = estimate_cost({REFINER: beyond})
    charges = estimate.line(REFINER).charges
    assert [c.unit_price for c in charges] == [t.unit_price for t in PRICE_TABLE[REFINER]]
    assert sum(c.images for c in charges) == beyond
    assert charges[-1].images == 1_000
    ends = [*boundaries[1:], beyond]
    expected = sum(
        (t.unit_price * (end - t.from_image) for t, end in zip(PRICE_TABLE[REFINER], ends, strict=True)), D(0)
    )
    assert estimate.total == expected


def test_already_this_month_moves_the_starting_tier() -> None:
    first_boundary = refiner_boundaries()[1]
    second_price = PRICE_TABLE[REFINER][1].unit_price
    estimate = estimate_cost({REFINER: 20}, already_this_month={REFINER: first_boundary - 10})
    charges = estimate.line(REFINER).charges
    assert [(c.images, c.unit_price) for c in charges] == [(10, D("0.30")), (10, second_price)]
    assert estimate.total == D("3.00") + second_price * 10
    assert unit_price(REFINER, already_this_month=first_boundary) == second_price
    assert unit_price(REFINER, already_this_month=first_boundary - 1) == D("0.30")


def test_already_past_the_last_boundary_pays_the_lowest_price() -> None:
    estimate = estimate_cost({REFINER: 10}, already_this_month={REFINER: 10_000_000})
    assert estimate.total == D("1.50")


def test_already_this_month_of_another_model_changes_nothing() -> None:
    alone = estimate_cost({REFINER: 50})
    with_other = estimate_cost({REFINER: 50}, already_this_month={"aitryon": 1_000_000})
    assert alone.total == with_other.total == D("15.00")


def test_lines_follow_the_table_order_and_zero_is_allowed() -> None:
    estimate = estimate_cost({REFINER: 1, "aitryon-plus": 0, "aitryon": 2})
    assert [line.model for line in estimate.lines] == ["aitryon", "aitryon-plus", REFINER]
    assert estimate.line("aitryon-plus").cost == 0
    assert estimate_cost({}).total == 0


def test_unknown_model_is_named_with_the_known_ones() -> None:
    with pytest.raises(ValueError) as caught:
        estimate_cost({"aitryon-pro": 1})
    message = str(caught.value)
    assert "'aitryon-pro'" in message
    for model in KNOWN_MODELS:
        assert model in message
    with pytest.raises(ValueError, match="'wanx'"):
        estimate_cost({"aitryon": 1}, already_this_month={"wanx": 3})


@pytest.mark.parametrize("bad", [-1, 1.5, "3", True, None])
def test_counts_must_be_non_negative_integers(bad: object) -> None:
    with pytest.raises(ValueError, match="aitryon"):
        estimate_cost({"aitryon": bad})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="already_this_month"):
        estimate_cost({"aitryon": 1}, already_this_month={"aitryon": bad})  # type: ignore[dict-item]


def test_format_cost_has_one_line_per_model_and_a_total() -> None:
    first_boundary = refiner_boundaries()[1]
    estimate = estimate_cost({"aitryon": 3, REFINER: first_boundary + 2})
    text = format_cost(estimate)
    lines = text.splitlines()
    assert len(lines) == 3
    assert lines[0] == "aitryon: 3 images = CNY 0.60 (3 x 0.20)"
    assert lines[1].startswith(f"{REFINER}: {first_boundary + 2:,} images = CNY ")
    assert f"{first_boundary:,} x 0.30 + 2 x " in lines[1]
    assert lines[2] == f"total: CNY {estimate.total:,.2f}"


def test_format_cost_mentions_the_monthly_offset() -> None:
    text = format_cost(estimate_cost({"aitryon": 1}, already_this_month={"aitryon": 1_200}))
    assert text.splitlines()[0] == "aitryon: 1 image = CNY 0.20 (1 x 0.20), after 1,200 already this month"


def test_to_dict_is_json_safe_and_exact() -> None:
    import json

    data = estimate_cost({"aitryon-plus": 3}).to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["total"] == "1.50"
    assert data["lines"][0]["charges"] == [{"images": 3, "unit_price": "0.50"}]


def test_estimate_is_a_value() -> None:
    assert estimate_cost({"aitryon": 2}) == estimate_cost({"aitryon": 2})
    assert isinstance(estimate_cost({"aitryon": 2}), CostEstimate)
