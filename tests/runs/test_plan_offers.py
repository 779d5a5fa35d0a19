"""A dry run of a new run shows the offers that fit it, cheapest first, as ``dstack apply`` does."""

import pytest

pytestmark = pytest.mark.django_db

APPLY = "/api/v1/projects/main/apply/?dry_run=true"


def plan_of(api, text: str) -> dict:
    response = api.post(APPLY, data=text, content_type="application/yaml")
    assert response.status_code == 200, response.content
    return response.json()["plan"]


def test_the_offers_that_fit_cheapest_first(api, sim_backend):
    plan = plan_of(api, "type: task\nname: t1\ncommands: [train]\nresources: {gpu: A100:2}\n")
    assert plan["offers"] and plan["offers_total"] >= len(plan["offers"])
    assert all(len(offer["resources"]["gpus"]) >= 2 and offer["resources"]["gpus"][0]["name"] == "A100"
               for offer in plan["offers"])
    prices = [offer["price"] for offer in plan["offers"]]
    assert prices == sorted(prices)
    assert {"backend", "instance_type", "region", "availability_zone", "spot", "price"} <= set(plan["offers"][0])


def test_the_runs_filters_apply(api, sim_backend):
    plan = plan_of(api, "type: task\nname: t1\ncommands: [x]\nregions: [us-east-1]\nmax_price: 0.5\n")
    assert plan["offers"] and all(o["region"] == "us-east-1" and o["price"] <= 0.5 for o in plan["offers"])


def test_no_offer_says_why(api, sim_backend):
    plan = plan_of(api, "type: task\nname: t1\ncommands: [x]\nresources: {gpu: H100:64}\n")
    assert plan["offers"] == [] and plan["offers_total"] == 0
    assert any("no offer matches" in reason for reason in plan["no_offers"])


def test_a_real_apply_asks_no_provider(api, sim_backend):
    response = api.post("/api/v1/projects/main/apply/", data="type: task\nname: t1\ncommands: [x]\n",
                        content_type="application/yaml")
    assert response.status_code == 202 and response.json()["plan"] is None


def test_the_providers_are_asked_outside_the_runs_transaction(api, sim_backend, monkeypatch):
    """A dry run holds no row lock (nor any transaction of its own) while a provider answers."""
    from django.db import connection

    from backends.drivers.sim import SimDriver

    depths, asked = [], SimDriver.offers

    def offers(self):
        depths.append(len(connection.atomic_blocks))
        return asked(self)

    monkeypatch.setattr(SimDriver, "offers", offers)
    test_depth = len(connection.atomic_blocks)  # the test's own transaction, if any
    plan_of(api, "type: task\nname: t1\ncommands: [x]\n")
    assert depths and set(depths) == {test_depth}
