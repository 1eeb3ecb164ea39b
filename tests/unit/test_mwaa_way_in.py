"""The MWAA way in through the `Downstream` seam, with the real boto3 `mwaa` client (real SigV4) against the local
MWAA emulator in front of the fake Airflow 2.11 and 3.3 APIs; cross-account roles through moto's STS.

What the forwarder learns from InvokeRestApi must match what it learns over HTTPS: Airflow's statuses classified the
same way, AWS-side errors mapped (throttling transient, access denied `auth`, unknown environment `invalid_target`),
a lost answer to a POST unconfirmed, and never a retried POST.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from dataset_forwarder.downstream import Downstream, Downstreams
from dataset_forwarder.envelope import Envelope, parse_envelope
from dataset_forwarder.outcomes import (
    AUTH,
    INVALID_TARGET,
    TIMEOUT,
    UNKNOWN_DAG,
    UNKNOWN_DATASET,
    DeliveryFailed,
    MayHaveLanded,
)
from dataset_forwarder.services import Services
from dataset_forwarder.targets import InvalidTarget, ParseRules, Target, parse_target
from dataset_forwarder.transport import Transport
from dataset_forwarder.ways_in.mwaa import CREDENTIALS_MARGIN_S, MAX_PATH, MwaaClients
from dataset_forwarder_cli.local.mwaa import MwaaEmulator
from devkit.airflow_api import FakeAirflow, Fault
from devkit.envelopes import envelope
from devkit.moto_env import aws_session, moto_server

BEARS = "s3://bucket/bears"
LONG_URI = "s3://lake/curated/orders/region=eu-west-1/daily.parquet"  # quoted, /datasets/{uri} passes 64 characters
ROLE = "arn:aws:iam::210987654321:role/dataset-forwarder-invoke"
FUNCTION_ROLE = "arn:aws:iam::123456789012:role/dataset-forwarder-function"
RULES = ParseRules(mwaa_environments=("*",), role_arns=(ROLE,))


def mwaa_target(environment: str, *, name: str = "team-c", **fields: Any) -> Target:
    spec = {"environment": environment, **fields.pop("mwaa", {})}
    return parse_target(name, {"mwaa": spec, "datasets": ["*"], **fields}, rules=RULES)


def an_envelope(uri: str = BEARS, **fields: Any) -> Envelope:
    return parse_envelope(json.dumps(envelope(uri, **fields)))


def failure_of(downstream: Downstream, sent: Envelope | None = None) -> DeliveryFailed:
    """What delivering `sent` (by default a new envelope of BEARS) raises; fails the test when it is delivered."""
    with pytest.raises(DeliveryFailed) as caught:
        downstream.deliver(sent or an_envelope())
    return caught.value


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[MwaaEmulator]:
    with MwaaEmulator(relay_timeout_s=2.0, max_hang_s=10) as started:
        monkeypatch.setenv("AWS_ENDPOINT_URL_MWAA", started.endpoint)
        yield started


@pytest.fixture
def boto_session() -> Any:
    return aws_session()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def downstreams(boto_session: Any, clock: Clock) -> Iterator[Downstreams]:
    with Transport(pool_size=2, max_hosts=2) as http:
        clients = MwaaClients(lambda: boto_session, endpoint_override=True, clock=clock)
        yield Downstreams(Services(http, _NoSecrets(), clients))


class _NoSecrets:
    def get(self, name: str, *, fresh: bool = False) -> str:
        raise AssertionError(f"an MWAA target read a secret: {name}")

    def known_values(self) -> list[str]:
        return []


@pytest.fixture
def af3(emulator: MwaaEmulator) -> Iterator[FakeAirflow]:
    with FakeAirflow("3", auth="airflow-token", datasets=[BEARS]) as fake:
        fake.add_dag("consumer")
        emulator.add_environment("team-c-prod", fake.url, airflow="3", username="admin", password="admin-pw")
        yield fake


@pytest.fixture
def af2(emulator: MwaaEmulator) -> Iterator[FakeAirflow]:
    with FakeAirflow("2", auth="basic", datasets=[BEARS, LONG_URI]) as fake:
        fake.add_dag("consumer")
        emulator.add_environment("team-d-prod", fake.url, airflow="2", username="admin", password="admin-pw")
        yield fake


@pytest.fixture(params=["2", "3"])
def env(request: pytest.FixtureRequest) -> tuple[str, FakeAirflow]:
    """(environment name, its Airflow), for either major."""
    if request.param == "3":
        return "team-c-prod", request.getfixturevalue("af3")
    return "team-d-prod", request.getfixturevalue("af2")


def _paths(emulator: MwaaEmulator, environment: str) -> list[tuple[str | None, str | None]]:
    return [(call.method, call.path) for call in emulator.calls_to(environment)]


# -- the target parameter -----------------------------------------------------------------------


def test_an_mwaa_target_outside_the_allowed_environments_or_roles_is_invalid_at_parse_time() -> None:
    rules = ParseRules(mwaa_environments=("team-c-prod",), role_arns=(ROLE,))
    base: dict[str, Any] = {"datasets": [BEARS]}

    assert parse_target("t", {**base, "mwaa": {"environment": "team-c-prod", "role_arn": ROLE}}, rules=rules)
    with pytest.raises(InvalidTarget, match="MWAA environment team-x-prod is not one this stack may invoke"):
        parse_target("t", {**base, "mwaa": {"environment": "team-x-prod"}}, rules=rules)
    with pytest.raises(InvalidTarget, match="role arn:aws:iam::210987654321:role/other is not one this stack may"):
        parse_target(
            "t",
            {
                **base,
                "mwaa": {"environment": "team-c-prod", "role_arn": ROLE[: -len("dataset-forwarder-invoke")] + "other"},
            },
            rules=rules,
        )
    with pytest.raises(InvalidTarget, match="MWAA_ENVIRONMENTS"):  # empty: no MWAA target at all
        parse_target("t", {**base, "mwaa": {"environment": "team-c-prod"}}, rules=ParseRules())
    with pytest.raises(InvalidTarget, match="TARGET_ROLE_ARNS"):
        parse_target(
            "t",
            {**base, "mwaa": {"environment": "team-c-prod", "role_arn": ROLE}},
            rules=ParseRules(mwaa_environments=("*",)),
        )
    anything = ParseRules(mwaa_environments=("*",), role_arns=("*",))
    assert parse_target("t", {**base, "mwaa": {"environment": "any-env", "role_arn": ROLE}}, rules=anything)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"environment": "team-c-prod", "region": "Mars"}, "'mwaa.region'"),
        ({"environment": "1-starts-with-a-digit"}, "'mwaa.environment'"),
        ({"environment": "team-c-prod", "role_arn": "team-role"}, "'mwaa.role_arn'"),
    ],
)
def test_a_malformed_mwaa_spec_is_refused(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidTarget, match=message):
        parse_target("t", {"mwaa": spec, "datasets": [BEARS]}, rules=RULES)


def test_an_mwaa_target_has_no_url_or_auth() -> None:
    with pytest.raises(InvalidTarget, match="exactly one way in"):
        parse_target(
            "t", {"mwaa": {"environment": "e"}, "url": "https://x.example.com", "datasets": [BEARS]}, rules=RULES
        )
    with pytest.raises(InvalidTarget, match="no 'url' or 'auth'"):
        parse_target("t", {"mwaa": {"environment": "e"}, "auth": {"type": "none"}, "datasets": [BEARS]}, rules=RULES)


# -- airflow auto, asset events, the did-it-land check ------------------------------------------


def test_airflow_auto_asks_get_version_once_on_either_major(
    env: tuple[str, FakeAirflow], emulator: MwaaEmulator, downstreams: Downstreams
) -> None:
    name, fake = env
    downstream = downstreams.get(mwaa_target(name))

    access = downstream.access()
    downstream.deliver(an_envelope())

    assert access.airflow_major == fake.version
    assert access.identity == "IAM as the function's role"
    assert _paths(emulator, name).count(("GET", "/version")) == 1
    assert _paths(emulator, name)[0] == ("GET", "/version")
    assert len(fake.events) == 1


def test_airflow3_asset_event_resolves_the_exact_asset_id_once(
    af3: FakeAirflow, emulator: MwaaEmulator, downstreams: Downstreams
) -> None:
    fish = "s3://bucket/fish"
    decoys = [af3.add_dataset("S3://BUCKET/FISH"), af3.add_dataset(fish + "-2")]  # listed before it by uri_pattern
    exact = af3.add_dataset(fish)
    downstream = downstreams.get(mwaa_target("team-c-prod"))
    sent = an_envelope(fish)

    first = downstream.deliver(sent)
    downstream.deliver(an_envelope(fish))

    assert (first.status, first.api) == (200, "v2")
    assert exact not in decoys
    assert [event.asset_id for event in af3.events] == [exact, exact]
    lookups = [c for c in emulator.calls_to("team-c-prod") if c.path == "/assets"]
    assert len(lookups) == 1
    assert lookups[0].query["uri_pattern"] == fish
    assert af3.events[0].extra["dataset_forwarder"]["id"] == sent.id
    assert (af3.events[0].authorization or "").startswith("Bearer ")  # the environment's own Airflow login


def test_airflow2_dataset_event_and_an_unknown_dataset(
    af2: FakeAirflow, emulator: MwaaEmulator, downstreams: Downstreams
) -> None:
    downstream = downstreams.get(mwaa_target("team-d-prod"))

    posted = downstream.deliver(an_envelope())
    unknown = failure_of(downstream, an_envelope("s3://bucket/nobody"))

    assert (posted.status, posted.api) == (200, "v1")
    assert [event.uri for event in af2.events] == [BEARS]
    assert (unknown.error, unknown.transient) == (UNKNOWN_DATASET, False)


def test_airflow2_lookup_of_a_uri_too_long_for_the_path_uses_the_pattern_listing(
    af2: FakeAirflow, emulator: MwaaEmulator, downstreams: Downstreams
) -> None:
    assert len("/datasets/" + quote(LONG_URI, safe="")) > MAX_PATH
    af2.add_dataset(LONG_URI + "-decoy")
    downstream = downstreams.get(mwaa_target("team-d-prod"))

    [check] = downstream.checks([LONG_URI])

    assert (check.ok, check.detail) == (True, "scheduled DAGs: consumer")
    paths = _paths(emulator, "team-d-prod")
    assert ("GET", "/datasets") in paths
    assert all(path is not None and len(path) <= MAX_PATH for _, path in paths)
    listing = next(c for c in emulator.calls_to("team-d-prod") if c.path == "/datasets")
    assert listing.query["uri_pattern"] == LONG_URI
    assert all(call.error is None for call in emulator.calls_to("team-d-prod"))


@pytest.mark.parametrize("uri", [BEARS, LONG_URI])
def test_already_received_finds_an_earlier_event_by_its_lineage_id(
    af2: FakeAirflow, af3: FakeAirflow, emulator: MwaaEmulator, downstreams: Downstreams, uri: str
) -> None:
    since = datetime.now(UTC) - timedelta(minutes=1)
    for fake, name in ((af2, "team-d-prod"), (af3, "team-c-prod")):
        fake.add_dataset(uri)
        fake.seed_events(uri, ["older", "landed", "newer"])
        downstream = downstreams.get(mwaa_target(name))
        deadline = time.monotonic() + 30

        body = {**envelope(uri, event_id="landed"), "emitted_at": since.isoformat()}
        assert downstream.already_received(parse_envelope(json.dumps(body)), deadline=deadline) is True
        body = {**envelope(uri, event_id="not-there"), "emitted_at": since.isoformat()}
        assert downstream.already_received(parse_envelope(json.dumps(body)), deadline=deadline) is False
    assert all(call.error is None for call in emulator.calls)


# -- trigger_dag --------------------------------------------------------------------------------


def test_trigger_dag_through_mwaa_starts_the_run_once_and_a_redelivery_is_already_there(
    env: tuple[str, FakeAirflow], emulator: MwaaEmulator, downstreams: Downstreams
) -> None:
    name, fake = env
    downstream = downstreams.get(mwaa_target(name, action="trigger_dag", dag_id="consumer"))
    sent = an_envelope(partition_key="p1")

    first = downstream.deliver(sent)
    again = downstream.deliver(sent)

    (run,) = fake.dag_runs
    assert run.run_id == f"dataset_forwarder__{sent.id}"
    assert run.conf["dataset_forwarder"]["id"] == sent.id
    assert run.conf["dataset_forwarder"]["partition_key"] == "p1"
    if fake.version == "3":
        assert run.body["logical_date"] is None
    assert (first.already_there, again.already_there, again.status) == (False, True, 409)
    posts = [c for c in emulator.calls_to(name) if c.method == "POST"]
    # Airflow 3.3 refuses a partition key for a DAG that is not partitioned: sent once more without it, remembered
    refused = [("/dags/consumer/dagRuns", 400, "RestApiClientException")] if fake.version == "3" else []
    assert [(c.path, c.rest_api_status, c.error) for c in posts] == [
        *refused,
        ("/dags/consumer/dagRuns", 200, None),
        ("/dags/consumer/dagRuns", 409, "RestApiClientException"),
    ]


def test_trigger_dag_of_an_unknown_dag_through_mwaa_is_unknown_dag(
    env: tuple[str, FakeAirflow], downstreams: Downstreams
) -> None:
    name, fake = env

    failure = failure_of(downstreams.get(mwaa_target(name, action="trigger_dag", dag_id="gone")))

    assert (failure.error, failure.transient) == (UNKNOWN_DAG, False)
    assert fake.dag_runs == []


def test_checks_of_a_trigger_dag_target_through_mwaa_say_paused(
    env: tuple[str, FakeAirflow], downstreams: Downstreams
) -> None:
    name, fake = env
    fake.set_paused("consumer", True)

    [check] = downstreams.get(mwaa_target(name, action="trigger_dag", dag_id="consumer")).checks([])

    assert check.ok
    assert check.detail.startswith("exists, paused")


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error", "transient"),
    [
        (503, "http_503", True),
        (500, "http_500", True),
        (403, AUTH, False),
        (400, "http_400", False),
    ],
)
def test_airflows_own_statuses_are_classified_as_over_https(
    af3: FakeAirflow, emulator: MwaaEmulator, downstreams: Downstreams, status: int, error: str, transient: bool
) -> None:
    downstream = downstreams.get(mwaa_target("team-c-prod", airflow="3", action="trigger_dag", dag_id="consumer"))
    af3.inject(Fault(status=status, method="POST", path_prefix="/api/v2/dags/"))

    failure = failure_of(downstream)

    assert (failure.error, failure.transient) == (error, transient)
    assert not isinstance(failure, MayHaveLanded)
    assert f"answered {status}" in failure.detail
    [call] = emulator.calls_to("team-c-prod")
    expected = "RestApiServerException" if status >= 500 else "RestApiClientException"
    assert (call.error, call.rest_api_status) == (expected, status)


def test_throttling_is_a_transient_429_and_is_not_retried_by_the_client(
    af3: FakeAirflow, emulator: MwaaEmulator, downstreams: Downstreams
) -> None:
    downstream = downstreams.get(mwaa_target("team-c-prod", airflow="3"))
    emulator.set_fault("team-c-prod", "throttle", times=3)

    failure = failure_of(downstream)

    assert (failure.error, failure.transient) == ("http_429", True)
    assert [c.error for c in emulator.calls_to("team-c-prod")] == ["ThrottlingException"]


def test_access_denied_is_auth(af3: FakeAirflow, emulator: MwaaEmulator, downstreams: Downstreams) -> None:
    emulator.set_allowed("team-c-prod", ["arn:aws:iam::999999999999:role/somebody-else"])

    failure = failure_of(downstreams.get(mwaa_target("team-c-prod")))

    assert (failure.error, failure.transient) == (AUTH, False)
    assert "check the IAM policy" in failure.detail
    assert af3.requests == []


def test_an_environment_mwaa_does_not_have_is_invalid_target(
    af3: FakeAirflow, emulator: MwaaEmulator, downstreams: Downstreams
) -> None:
    for target in (mwaa_target("team-x-prod"), mwaa_target("team-c-prod", mwaa={"region": "eu-west-1"})):
        failure = failure_of(downstreams.get(target))
        assert (failure.error, failure.transient) == (INVALID_TARGET, False)
        assert "no MWAA environment" in failure.detail
    assert af3.requests == []


def test_an_internal_error_on_a_post_is_transient_unconfirmed_and_made_exactly_once(
    af3: FakeAirflow, emulator: MwaaEmulator, downstreams: Downstreams
) -> None:
    downstream = downstreams.get(mwaa_target("team-c-prod", airflow="3", action="trigger_dag", dag_id="consumer"))
    emulator.set_fault("team-c-prod", "internal", times=5)

    failure = failure_of(downstream)

    assert (failure.error, failure.transient, isinstance(failure, MayHaveLanded)) == (
        "http_500",
        True,
        True,
    )
    assert [(c.method, c.error) for c in emulator.calls_to("team-c-prod")] == [("POST", "InternalServerException")]


def test_a_hung_post_is_a_timeout_that_may_have_landed_and_a_hung_get_is_not(
    af3: FakeAirflow, emulator: MwaaEmulator, downstreams: Downstreams
) -> None:
    poster = downstreams.get(
        mwaa_target("team-c-prod", airflow="3", action="trigger_dag", dag_id="consumer", timeout_s=1)
    )
    reader = downstreams.get(mwaa_target("team-c-prod", name="reader", timeout_s=1))
    emulator.set_fault("team-c-prod", "hang")
    try:
        started = time.monotonic()
        with pytest.raises(DeliveryFailed) as post:
            poster.deliver(an_envelope())
        with pytest.raises(DeliveryFailed) as get:
            reader.checks([BEARS])
        elapsed = time.monotonic() - started
    finally:
        emulator.clear_fault("team-c-prod")

    assert (post.value.error, post.value.transient, isinstance(post.value, MayHaveLanded)) == (TIMEOUT, True, True)
    assert (get.value.error, isinstance(get.value, MayHaveLanded)) == (TIMEOUT, False)
    assert elapsed < 6
    deadline = time.monotonic() + 5  # a hung call is recorded when its hang ends
    while len(emulator.calls_to("team-c-prod")) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    calls = emulator.calls_to("team-c-prod")
    assert sorted((c.method, c.path, c.error) for c in calls) == [  # one each: never retried
        ("GET", "/version", "hang"),
        ("POST", "/dags/consumer/dagRuns", "hang"),
    ]
    assert af3.dag_runs == []


def test_a_post_that_mwaa_gave_up_waiting_for_is_unconfirmed(
    af3: FakeAirflow, emulator: MwaaEmulator, downstreams: Downstreams
) -> None:
    """InvokeRestApi's own deadline (504) does not undo Airflow's work: the run may exist (docs/local-mwaa.md)."""
    downstream = downstreams.get(mwaa_target("team-c-prod", airflow="3", action="trigger_dag", dag_id="consumer"))
    af3.inject(Fault(delay_s=3.0, method="POST", path_prefix="/api/v2/dags/"))  # > the relay timeout (2 s)

    failure = failure_of(downstream)

    assert (failure.error, failure.transient, isinstance(failure, MayHaveLanded)) == (
        "http_504",
        True,
        True,
    )
    af3.wait_for_dag_runs(1, timeout_s=5)  # it did land


# -- cross-account: role_arn through moto STS ---------------------------------------------------


@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log: Path = tmp_path_factory.mktemp("moto") / "moto.log"
    with moto_server(log) as endpoint:
        yield endpoint


@pytest.fixture
def cross_account(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[MwaaEmulator, FakeAirflow]]:
    """An environment in account 210987654321 that admits only ROLE's sessions; the function's key is its own role."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_endpoint)
    with (
        MwaaEmulator(keys={}, moto_endpoint=moto_endpoint) as emulator,
        FakeAirflow("3", datasets=[BEARS]) as fake,
    ):
        monkeypatch.setenv("AWS_ENDPOINT_URL_MWAA", emulator.endpoint)
        emulator.add_key("testing", "testing", FUNCTION_ROLE)
        emulator.add_environment("team-e-prod", fake.url, account="210987654321", allow=[ROLE])
        fake.add_dag("consumer")
        yield emulator, fake


def _count_assume_role(boto_session: Any) -> list[str]:
    seen: list[str] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        seen.append(params["RoleArn"])

    boto_session.events.register("provide-client-params.sts.AssumeRole", record)
    return seen


def test_a_role_arn_is_assumed_and_its_session_is_admitted_where_the_function_is_not(
    cross_account: tuple[MwaaEmulator, FakeAirflow], downstreams: Downstreams, boto_session: Any
) -> None:
    emulator, fake = cross_account
    assumed = _count_assume_role(boto_session)
    as_role = downstreams.get(
        mwaa_target("team-e-prod", mwaa={"role_arn": ROLE}, action="trigger_dag", dag_id="consumer")
    )
    as_function = downstreams.get(mwaa_target("team-e-prod", name="own-identity"))

    posted = as_role.deliver(an_envelope())
    access = as_role.access()
    denied = failure_of(as_function)

    assert not posted.already_there
    assert len(fake.dag_runs) == 1
    assert access.identity == f"IAM as {ROLE}"
    assert assumed == [ROLE]  # once, for every call
    callers = {call.caller for call in emulator.calls if call.error is None}
    assert callers == {"arn:aws:sts::210987654321:assumed-role/dataset-forwarder-invoke/dataset-forwarder"}
    assert denied.error == AUTH
    assert FUNCTION_ROLE in denied.detail


def test_assumed_credentials_are_cached_until_shortly_before_they_expire(
    cross_account: tuple[MwaaEmulator, FakeAirflow], downstreams: Downstreams, boto_session: Any, clock: Clock
) -> None:
    emulator, fake = cross_account
    assumed = _count_assume_role(boto_session)
    downstream = downstreams.get(mwaa_target("team-e-prod", mwaa={"role_arn": ROLE}))
    expires = clock.now + 3600  # moto's AssumeRole gives the asked DurationSeconds

    downstream.deliver(an_envelope())
    clock.now = expires - CREDENTIALS_MARGIN_S - 60
    downstream.deliver(an_envelope())
    assert len(assumed) == 1
    clock.now = expires - CREDENTIALS_MARGIN_S + 60
    downstream.deliver(an_envelope())

    assert len(assumed) == 2
    assert len(fake.events) == 3
    assert all(call.error is None for call in emulator.calls)


def test_a_role_sts_will_not_let_us_assume_is_auth(
    cross_account: tuple[MwaaEmulator, FakeAirflow], downstreams: Downstreams, boto_session: Any
) -> None:
    """moto lets any role be assumed; a session whose STS refuses shows what the operator gets."""
    emulator, fake = cross_account

    def refuse(**_: Any) -> None:
        from botocore.exceptions import ClientError

        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "not authorized"}}, "AssumeRole")

    boto_session.events.register("before-call.sts.AssumeRole", refuse)

    failure = failure_of(downstreams.get(mwaa_target("team-e-prod", mwaa={"role_arn": ROLE})))

    assert (failure.error, failure.transient) == (AUTH, False)
    assert f"cannot assume {ROLE}: AccessDenied" in failure.detail
    assert emulator.calls == []
    assert fake.requests == []


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """A TCP endpoint that accepts connections and never answers (an STS that hangs)."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(timeout=5)
    for sock in held:
        sock.close()
    server.close()


def test_an_sts_that_does_not_answer_fails_the_try_within_the_targets_timeout(
    emulator: MwaaEmulator,
    af3: FakeAirflow,
    downstreams: Downstreams,
    silent_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """AssumeRole runs inside a delivery: botocore's defaults (60 s reads, retried) would outlast the function."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", silent_endpoint)
    started = time.monotonic()

    failure = failure_of(downstreams.get(mwaa_target("team-c-prod", mwaa={"role_arn": ROLE}, timeout_s=1)))

    assert time.monotonic() - started < 4
    assert failure.transient
    assert "STS AssumeRole" in failure.detail
    assert emulator.calls == []
