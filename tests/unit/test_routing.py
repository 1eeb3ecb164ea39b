"""route(): fan-out over matching targets, loop guard on the trail, and `only_targets` replays."""

from __future__ import annotations

import json
from typing import Any

from dataset_forwarder.envelope import Envelope, parse_envelope
from dataset_forwarder.routing import Route, route
from dataset_forwarder.targets import Catalog, Target
from dataset_forwarder.ways_in.https import HttpsWayIn

BEARS = "s3://bucket/bears"


def target(name: str, *datasets: str, enabled: bool = True) -> Target:
    return Target(
        name=name,
        way_in=HttpsWayIn(f"https://{name}.example"),
        airflow="3",
        datasets=datasets or (BEARS,),
        enabled=enabled,
    )


def envelope(uri: str = BEARS, *, trail: list[str] | None = None, only_targets: list[str] | None = None) -> Envelope:
    data: dict[str, Any] = {"version": 1, "id": "e1", "uri": uri, "trail": trail, "only_targets": only_targets}
    return parse_envelope(json.dumps(data))


def catalog(*targets: Target, broken: dict[str, str] | None = None) -> Catalog:
    return Catalog(targets={t.name: t for t in targets}, broken=broken or {})


def names(plan: Route) -> list[str]:
    return sorted(t.name for t in plan.targets)


# -- fan-out ----------------------------------------------------------------------------------


def test_event_fans_out_to_every_matching_target() -> None:
    cat = catalog(target("team-b", BEARS), target("team-c", "s3://bucket/*"), target("team-d", "s3://other/*"))

    plan = route(envelope(), cat)

    assert names(plan) == ["team-b", "team-c"]
    assert plan.rejected == ()
    assert plan.looped == ()
    assert not plan.empty


def test_disabled_target_is_skipped_silently() -> None:
    cat = catalog(target("team-b"), target("team-c", enabled=False))

    plan = route(envelope(), cat)

    assert names(plan) == ["team-b"]
    assert plan.rejected == ()
    assert plan.looped == ()


def test_no_matching_target_gives_an_empty_route() -> None:
    plan = route(envelope("s3://nobody/wants/this"), catalog(target("team-b")))

    assert plan.targets == ()
    assert plan.empty


def test_empty_catalog_gives_an_empty_route() -> None:
    assert route(envelope(), catalog()).empty


def test_broken_targets_do_not_take_part_in_fan_out() -> None:
    plan = route(envelope(), catalog(target("team-b"), broken={"team-c": "'url' has no host"}))

    assert names(plan) == ["team-b"]
    assert plan.rejected == ()


# -- loop guard -------------------------------------------------------------------------------


def test_targets_in_the_trail_are_not_delivered_and_reported_as_looped() -> None:
    cat = catalog(target("team-a-prod"), target("team-b"), target("team-c"))

    plan = route(envelope(trail=["team-a-prod", "team-c"]), cat)

    assert names(plan) == ["team-b"]
    assert sorted(plan.looped) == ["team-a-prod", "team-c"]
    assert not plan.empty


def test_route_with_only_looped_targets_is_empty() -> None:
    plan = route(envelope(trail=["team-b"]), catalog(target("team-b")))

    assert plan.targets == ()
    assert plan.looped == ("team-b",)
    assert plan.empty


def test_trail_names_that_do_not_match_are_not_reported_as_looped() -> None:
    plan = route(envelope(trail=["team-c"]), catalog(target("team-b"), target("team-c", "s3://other/*")))

    assert names(plan) == ["team-b"]
    assert plan.looped == ()


def test_only_targets_entry_in_the_trail_is_looped_not_delivered() -> None:
    plan = route(envelope(trail=["team-b"], only_targets=["team-b"]), catalog(target("team-b")))

    assert plan.targets == ()
    assert plan.looped == ("team-b",)
    assert plan.rejected == ()


# -- only_targets -----------------------------------------------------------------------------


def test_only_targets_restricts_delivery_to_the_named_targets() -> None:
    cat = catalog(target("team-b"), target("team-c"), target("team-d"))

    plan = route(envelope(only_targets=["team-c"]), cat)

    assert names(plan) == ["team-c"]
    assert plan.rejected == ()


def test_empty_only_targets_list_routes_nowhere() -> None:
    plan = route(envelope(only_targets=[]), catalog(target("team-b")))

    assert plan.targets == ()
    assert plan.empty


def test_only_targets_naming_an_unknown_target_is_rejected() -> None:
    plan = route(envelope(only_targets=["ghost"]), catalog(target("team-b")))

    assert plan.targets == ()
    ((name, reason),) = plan.rejected
    assert name == "ghost"
    assert "does not exist" in reason
    assert not plan.empty


def test_only_targets_naming_a_broken_target_is_rejected_with_the_breakage() -> None:
    plan = route(envelope(only_targets=["team-c"]), catalog(broken={"team-c": "'url' has no host"}))

    ((name, reason),) = plan.rejected
    assert name == "team-c"
    assert "broken" in reason
    assert "'url' has no host" in reason


def test_only_targets_naming_a_disabled_target_is_rejected() -> None:
    plan = route(envelope(only_targets=["team-c"]), catalog(target("team-c", enabled=False)))

    ((name, reason),) = plan.rejected
    assert name == "team-c"
    assert "disabled" in reason


def test_only_targets_naming_a_target_that_no_longer_matches_is_rejected() -> None:
    plan = route(envelope(only_targets=["team-c"]), catalog(target("team-c", "s3://other/*")))

    ((name, reason),) = plan.rejected
    assert name == "team-c"
    assert "no longer subscribes" in reason
    assert BEARS in reason


def test_only_targets_mixes_delivery_and_rejections_in_order() -> None:
    cat = catalog(target("team-b"), target("team-c", enabled=False), broken={"team-e": "bad"})

    plan = route(envelope(only_targets=["ghost", "team-b", "team-c", "team-e"]), cat)

    assert names(plan) == ["team-b"]
    assert [name for name, _ in plan.rejected] == ["ghost", "team-c", "team-e"]


def test_duplicate_only_targets_are_counted_once() -> None:
    cat = catalog(target("team-b"))

    plan = route(envelope(only_targets=["team-b", "team-b", "ghost", "ghost"]), cat)

    assert names(plan) == ["team-b"]
    assert [name for name, _ in plan.rejected] == ["ghost"]


# -- Route.empty ------------------------------------------------------------------------------


def test_route_empty_property() -> None:
    t = target("team-b")
    assert Route(targets=()).empty
    assert Route(targets=(), looped=("team-a",)).empty
    assert not Route(targets=(t,)).empty
    assert not Route(targets=(), rejected=(("ghost", "does not exist"),)).empty
