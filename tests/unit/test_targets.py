"""Target parameters (docs/operate.md): validation, URI matching, the catalog and its TTL cache."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from dataset_forwarder.targets import (
    DEFAULT_TIMEOUT_S,
    InvalidTarget,
    Target,
    TargetStore,
    TargetsUnavailable,
    build_catalog,
    parse_target,
)
from dataset_forwarder.ways_in.auth import Auth
from dataset_forwarder.ways_in.https import HttpsWayIn

URL = "https://clxyz.astronomer.run/d8x2k1"


def target_value(name: str = "team-b", **overrides: Any) -> dict[str, Any]:
    """A valid value for target `name` (its secret lies under that name)."""
    value: dict[str, Any] = {
        "url": URL,
        "airflow": "auto",
        "datasets": ["s3://bucket/bears", "s3://lake/raw/*"],
        "auth": {"type": "bearer", "secret": f"/dataset-forwarder/secrets/{name}"},
        "timeout_s": 10,
        "enabled": True,
    }
    value.update(overrides)
    return value


def rejected(value: str | Mapping[str, Any], *, name: str = "team-b", allow_http: bool = False) -> str:
    with pytest.raises(InvalidTarget) as caught:
        parse_target(name, value, allow_http=allow_http)
    return str(caught.value)


def target(*datasets: str, name: str = "t", enabled: bool = True) -> Target:
    return Target(name=name, way_in=HttpsWayIn(URL), airflow="3", datasets=datasets, enabled=enabled)


# -- valid targets ----------------------------------------------------------------------------


def test_design_example_parses_from_json_text() -> None:
    parsed = parse_target("team-b", json.dumps(target_value()))

    assert parsed == Target(
        name="team-b",
        way_in=HttpsWayIn(URL, Auth("bearer", secret="/dataset-forwarder/secrets/team-b")),
        airflow="auto",
        datasets=("s3://bucket/bears", "s3://lake/raw/*"),
        timeout_s=10.0,
        enabled=True,
    )


def test_bearer_auth_drops_a_stray_username() -> None:
    auth = {"type": "bearer", "secret": "/dataset-forwarder/secrets/team-b/token", "username": "ignored"}
    assert parse_target("team-b", target_value(auth=auth)).way_in.auth == Auth(
        "bearer", secret="/dataset-forwarder/secrets/team-b/token"
    )


def test_basic_auth_keeps_username_and_secret() -> None:
    auth = {"type": "basic", "username": "admin", "secret": "/dataset-forwarder/secrets/team-b/pw"}
    assert parse_target("team-b", target_value(airflow="2", auth=auth)).way_in.auth == Auth(
        "basic", secret="/dataset-forwarder/secrets/team-b/pw", username="admin"
    )


def test_airflow_token_auth_keeps_username_and_secret() -> None:
    auth = {"type": "airflow-token", "username": "admin", "secret": "/dataset-forwarder/secrets/team-b/pw"}
    assert parse_target("team-b", target_value(airflow="3", auth=auth)).way_in.auth == Auth(
        "airflow-token", secret="/dataset-forwarder/secrets/team-b/pw", username="admin"
    )


def test_none_auth_needs_nothing_else() -> None:
    assert parse_target("team-b", target_value(auth={"type": "none"})).way_in.auth == Auth("none")


def test_missing_auth_means_none() -> None:
    value = target_value()
    del value["auth"]
    assert parse_target("t", value).way_in.auth == Auth("none")


def test_defaults_apply_when_optional_fields_are_missing() -> None:
    parsed = parse_target("t", {"url": URL, "datasets": ["s3://b/x"]})

    assert parsed.airflow == "auto"
    assert parsed.timeout_s == DEFAULT_TIMEOUT_S == 10.0
    assert parsed.enabled is True
    assert parsed.way_in.auth == Auth("none")


@pytest.mark.parametrize(("given", "expected"), [("2", "2"), ("3", "3"), (2, "2"), (3, "3"), ("auto", "auto")])
def test_airflow_version_accepts_strings_and_integers(given: Any, expected: str) -> None:
    assert parse_target("team-b", target_value(airflow=given)).airflow == expected


@pytest.mark.parametrize("timeout", [0.5, 1, 60, 60.0])
def test_timeout_within_range_is_accepted_as_float(timeout: float) -> None:
    parsed = parse_target("team-b", target_value(timeout_s=timeout))
    assert parsed.timeout_s == float(timeout)
    assert isinstance(parsed.timeout_s, float)


def test_disabled_target_parses() -> None:
    assert parse_target("team-b", target_value(enabled=False)).enabled is False


@pytest.mark.parametrize("name", ["a", "team-b", "Team_B.prod-2", "x" * 64])
def test_valid_names_are_accepted(name: str) -> None:
    assert parse_target(name, target_value(name)).name == name


def test_trailing_slash_of_url_is_removed() -> None:
    assert parse_target("team-b", target_value(url=URL + "/")).way_in.url == URL


def test_url_with_port_and_path_is_accepted() -> None:
    assert (
        parse_target("team-b", target_value(url="https://airflow.example:8443/a/b")).way_in.url
        == "https://airflow.example:8443/a/b"
    )


def test_duplicate_datasets_are_collapsed_in_order() -> None:
    parsed = parse_target("team-b", target_value(datasets=["s3://b/2", "s3://b/1", "s3://b/2"]))
    assert parsed.datasets == ("s3://b/2", "s3://b/1")


def test_http_url_is_accepted_when_allowed() -> None:
    assert (
        parse_target("team-b", target_value(url="http://127.0.0.1:8080"), allow_http=True).way_in.url
        == "http://127.0.0.1:8080"
    )


def test_to_json_round_trips() -> None:
    auth = {"type": "basic", "username": "admin", "secret": "/dataset-forwarder/secrets/team-b/pw"}
    parsed = parse_target("team-b", target_value(auth=auth, timeout_s=2.5, enabled=False))

    assert parse_target("team-b", json.dumps(parsed.to_json())) == parsed


# -- rejected targets -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["team/b", "", "x" * 65, "team b", "team-b\n", "tëam"],
    ids=["slash", "empty", "65-chars", "space", "newline", "non-ascii"],
)
def test_bad_names_are_rejected(name: str) -> None:
    message = rejected(target_value(), name=name)
    assert "target name" in message
    assert repr(name) in message


def test_non_json_value_is_rejected() -> None:
    assert "not JSON" in rejected("{url: nope")


def test_json_array_value_is_rejected() -> None:
    assert "JSON object" in rejected(json.dumps([target_value()]))


def test_http_url_is_rejected_without_allow_http_and_says_how_to_allow_it() -> None:
    message = rejected(target_value(url="http://airflow.internal:8080"))
    assert "https" in message
    assert "ALLOW_HTTP_TARGETS" in message
    assert "'http'" in message


def test_url_with_credentials_is_rejected_without_echoing_them() -> None:
    message = rejected(target_value(url="https://user:s3cr3t-pw@airflow.example"))
    assert "credentials" in message
    assert "s3cr3t-pw" not in message


def test_url_with_username_only_is_rejected() -> None:
    assert "credentials" in rejected(target_value(url="https://user@airflow.example"))


def test_url_with_query_is_rejected() -> None:
    assert "query" in rejected(target_value(url="https://airflow.example/?tenant=1"))


def test_url_with_fragment_is_rejected() -> None:
    assert "fragment" in rejected(target_value(url="https://airflow.example/#x"))


def test_ftp_scheme_is_rejected_even_when_http_is_allowed() -> None:
    message = rejected(target_value(url="ftp://airflow.example"), allow_http=True)
    assert "'ftp'" in message


def test_url_without_scheme_is_rejected() -> None:
    assert "https" in rejected(target_value(url="airflow.example/api"))


@pytest.mark.parametrize("url", ["https://", "https:///path", "https://:8080"])
def test_url_without_host_is_rejected(url: str) -> None:
    assert "no host" in rejected(target_value(url=url))


def test_url_with_bad_port_is_rejected() -> None:
    assert "malformed" in rejected(target_value(url="https://airflow.example:99999"))


@pytest.mark.parametrize("url", [None, "", 42])
def test_missing_or_non_string_url_is_rejected(url: Any) -> None:
    value = target_value(url=url)
    if url is None:
        del value["url"]
    message = rejected(value)
    assert "'url'" in message
    assert "required" in message


@pytest.mark.parametrize("airflow", ["4", "v3", 1, True, None, "3.0"])
def test_unknown_airflow_value_is_rejected(airflow: Any) -> None:
    message = rejected(target_value(airflow=airflow))
    assert "'airflow'" in message
    assert "auto, 2, 3" in message


@pytest.mark.parametrize(
    "datasets",
    [[], None, "s3://b/x", ["s3://b/x", 7], ["s3://b/x", ""]],
    ids=["empty", "null", "string", "non-string-item", "empty-item"],
)
def test_bad_datasets_are_rejected(datasets: Any) -> None:
    assert "'datasets' must be a non-empty list" in rejected(target_value(datasets=datasets))


def test_missing_datasets_is_rejected() -> None:
    value = target_value()
    del value["datasets"]
    assert "'datasets'" in rejected(value)


def test_unknown_auth_type_is_rejected_and_lists_the_known_ones() -> None:
    message = rejected(target_value(auth={"type": "oauth", "secret": "/s"}))
    assert "'auth.type'" in message
    assert "'oauth'" in message
    for known in ("bearer", "basic", "airflow-token", "none"):
        assert known in message


def test_auth_that_is_not_an_object_is_rejected() -> None:
    assert "'auth' must be an object" in rejected(target_value(auth="bearer"))


@pytest.mark.parametrize("auth_type", ["bearer", "basic", "airflow-token"])
def test_auth_without_secret_is_rejected(auth_type: str) -> None:
    message = rejected(target_value(auth={"type": auth_type, "username": "admin"}))
    assert "'auth.secret'" in message
    assert auth_type in message


@pytest.mark.parametrize("auth_type", ["basic", "airflow-token"])
def test_auth_without_username_is_rejected(auth_type: str) -> None:
    message = rejected(target_value(auth={"type": auth_type, "secret": "/dataset-forwarder/secrets/team-b/pw"}))
    assert "'auth.username'" in message
    assert auth_type in message


@pytest.mark.parametrize(
    "timeout",
    [0, -1, 61, 60.5, "10", True, None],
    ids=["zero", "negative", "61", "60.5", "string", "bool", "null"],
)
def test_bad_timeout_is_rejected(timeout: Any) -> None:
    message = rejected(target_value(timeout_s=timeout))
    assert "'timeout_s'" in message
    assert "60" in message


@pytest.mark.parametrize("enabled", ["yes", "true", 1, None])
def test_non_boolean_enabled_is_rejected(enabled: Any) -> None:
    assert "'enabled' must be true or false" in rejected(target_value(enabled=enabled))


# -- Target.matches ---------------------------------------------------------------------------


def test_exact_uri_matches() -> None:
    t = target("s3://bucket/bears")
    assert t.matches("s3://bucket/bears")
    assert not t.matches("s3://bucket/bears-2")
    assert not t.matches("s3://bucket/bear")


def test_star_glob_matches_any_suffix_including_slashes() -> None:
    t = target("s3://lake/raw/*")
    assert t.matches("s3://lake/raw/a")
    assert t.matches("s3://lake/raw/a/b.parquet")
    assert not t.matches("s3://lake/clean/a")


def test_question_mark_glob_matches_one_character() -> None:
    t = target("s3://b/part-?")
    assert t.matches("s3://b/part-1")
    assert not t.matches("s3://b/part-10")
    assert not t.matches("s3://b/part-")


def test_uri_with_bracket_matches_itself_exactly() -> None:
    t = target("s3://b/x[1]")
    assert t.matches("s3://b/x[1]")  # exact, although fnmatch would not match it
    assert t.matches("s3://b/x1")  # and the glob meaning still applies


def test_matching_is_case_sensitive() -> None:
    assert not target("s3://bucket/bears").matches("S3://BUCKET/BEARS")
    assert not target("s3://bucket/*").matches("S3://bucket/bears")


def test_any_of_several_patterns_matches() -> None:
    t = target("s3://a/x", "s3://b/*")
    assert t.matches("s3://a/x")
    assert t.matches("s3://b/y")
    assert not t.matches("s3://c/z")


# -- build_catalog ----------------------------------------------------------------------------


def test_build_catalog_separates_good_and_broken_parameters() -> None:
    raw = {
        "team-b": json.dumps(target_value()),
        "team-c": json.dumps(target_value(url="http://insecure")),
        "team-d": "not json",
        "team-e": json.dumps(target_value("team-e", enabled=False)),
    }

    catalog = build_catalog(raw, allow_http=False)

    assert set(catalog.targets) == {"team-b", "team-e"}
    assert set(catalog.broken) == {"team-c", "team-d"}
    assert "https" in catalog.broken["team-c"]
    assert "not JSON" in catalog.broken["team-d"]
    assert catalog.targets["team-e"].enabled is False


def test_build_catalog_reports_a_bad_name_as_broken() -> None:
    catalog = build_catalog({"bad name": json.dumps(target_value())}, allow_http=False)
    assert catalog.targets == {}
    assert "target name" in catalog.broken["bad name"]


def test_build_catalog_honours_allow_http() -> None:
    catalog = build_catalog({"local": json.dumps(target_value("local", url="http://127.0.0.1:8080"))}, allow_http=True)
    assert set(catalog.targets) == {"local"}
    assert catalog.broken == {}


# -- TargetStore ------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Fetcher:
    """Returns the configured parameters, or raises `error` when set; counts calls."""

    def __init__(self, raw: Mapping[str, str]) -> None:
        self.raw: Mapping[str, str] = raw
        self.error: Exception | None = None
        self.calls = 0

    def __call__(self) -> Mapping[str, str]:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return dict(self.raw)


def one_target(name: str = "team-b") -> dict[str, str]:
    return {name: json.dumps(target_value(name))}


def make_store(
    fetch: Fetcher,
    clock: FakeClock,
    *,
    ttl_s: float = 60.0,
    retry_after_error_s: float = 5.0,
    on_broken: Callable[[str, str], None] | None = None,
) -> TargetStore:
    return TargetStore(
        fetch,
        ttl_s=ttl_s,
        allow_http=False,
        on_broken=on_broken,
        clock=clock,
        retry_after_error_s=retry_after_error_s,
    )


def test_store_caches_the_catalog_for_the_ttl() -> None:
    clock, fetch = FakeClock(), Fetcher(one_target())
    store = make_store(fetch, clock)

    first = store.catalog()
    clock.now += 59.9
    second = store.catalog()

    assert fetch.calls == 1
    assert second is first


def test_store_reloads_after_the_ttl() -> None:
    clock, fetch = FakeClock(), Fetcher(one_target("team-b"))
    store = make_store(fetch, clock)
    store.catalog()

    fetch.raw = one_target("team-c")
    clock.now += 60.0
    catalog = store.catalog()

    assert fetch.calls == 2
    assert set(catalog.targets) == {"team-c"}


def test_store_with_zero_ttl_fetches_every_time() -> None:
    clock, fetch = FakeClock(), Fetcher(one_target())
    store = make_store(fetch, clock, ttl_s=0)

    store.catalog()
    store.catalog()

    assert fetch.calls == 2


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def target_logs() -> Iterator[Records]:
    """Records of the targets module's logger, whatever the handler set-up of other tests."""
    logger = logging.getLogger("dataset_forwarder.targets")
    handler, level = Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_store_keeps_previous_catalog_on_fetch_error_and_retries_sooner(target_logs: Records) -> None:
    clock, fetch = FakeClock(), Fetcher(one_target())
    store = make_store(fetch, clock, ttl_s=60, retry_after_error_s=5)
    good = store.catalog()

    clock.now += 60
    fetch.error = ConnectionError("ssm unreachable")
    assert store.catalog() is good
    assert fetch.calls == 2
    (warning,) = target_logs.records
    assert warning.levelno == logging.WARNING
    assert "previous set" in warning.getMessage()

    clock.now += 4.9  # within the shorter retry delay: no fetch
    assert store.catalog() is good
    assert fetch.calls == 2

    clock.now += 0.1  # 5 s after the failure, well before a full TTL: fetched again
    fetch.error = None
    fetch.raw = one_target("team-c")
    assert set(store.catalog().targets) == {"team-c"}
    assert fetch.calls == 3


def test_store_retry_after_error_never_exceeds_the_ttl() -> None:
    clock, fetch = FakeClock(), Fetcher(one_target())
    store = make_store(fetch, clock, ttl_s=2, retry_after_error_s=5)
    store.catalog()

    clock.now += 2
    fetch.error = TimeoutError("slow")
    store.catalog()
    clock.now += 2
    store.catalog()

    assert fetch.calls == 3


def test_store_first_load_error_raises_targets_unavailable() -> None:
    clock, fetch = FakeClock(), Fetcher(one_target())
    fetch.error = PermissionError("AccessDenied")
    store = make_store(fetch, clock)

    with pytest.raises(TargetsUnavailable, match="AccessDenied") as caught:
        store.catalog()
    assert isinstance(caught.value.__cause__, PermissionError)

    # Without an earlier copy, the next call tries again at once.
    fetch.error = None
    assert set(store.catalog().targets) == {"team-b"}
    assert fetch.calls == 2


def test_store_reports_each_broken_parameter() -> None:
    clock = FakeClock()
    fetch = Fetcher({**one_target("good"), "bad-1": "nope", "bad-2": json.dumps(target_value(datasets=[]))})
    reports: list[tuple[str, str]] = []
    store = make_store(fetch, clock, on_broken=lambda name, reason: reports.append((name, reason)))

    catalog = store.catalog()

    assert set(catalog.targets) == {"good"}
    assert sorted(name for name, _ in reports) == ["bad-1", "bad-2"]
    assert dict(reports) == dict(catalog.broken)


def test_store_does_not_report_broken_parameters_again_from_cache() -> None:
    clock, fetch = FakeClock(), Fetcher({"bad": "nope"})
    reports: list[str] = []
    store = make_store(fetch, clock, on_broken=lambda name, _reason: reports.append(name))

    store.catalog()
    store.catalog()
    assert reports == ["bad"]

    clock.now += 60
    store.catalog()
    assert reports == ["bad", "bad"]
