"""Hostile target parameters through moto SSM, and a hostile upstream's `only_targets` (issue 14)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from dataset_forwarder.dead_letters import UNCONFIRMED
from dataset_forwarder.stats import INVALID_TARGET_CONFIG
from devkit.airflow_api import FakeAirflow
from devkit.aws import ForwarderStack
from devkit.envelopes import envelope
from devkit.lambda_sqs import LambdaSqsDriver
from tests.integration.conftest import LogCapture, SeenByOperator, polled

BEARS = "s3://bucket/bears"


def metric_total(stdout: str, name: str, target: str) -> float:
    """The sum of one metric for one target over the EMF documents the function printed."""
    total = 0.0
    for line in stdout.splitlines():
        try:
            document = json.loads(line)
        except ValueError:
            continue
        if not isinstance(document, dict) or "_aws" not in document or document.get("target") != target:
            continue
        value = document.get(name, 0)
        total += sum(value) if isinstance(value, list) else float(value)
    return total


def cli_outputs(stack: ForwarderStack, *commands: list[str]) -> str:
    """What `dataset-forwarder` prints for each command, against this stack."""
    from click.testing import CliRunner

    from dataset_forwarder_cli.main import cli

    base = ["--targets-path", stack.targets_path, "--secrets-path", stack.secrets_path]
    base += ["--queue-url", stack.queue_url, "--dlq-url", stack.dlq_url]
    outputs = []
    for command in commands:
        result = CliRunner().invoke(cli, [*base, *command], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
    return "\n".join(outputs)


# -- point 1: no target borrows another's secret -------------------------------------------------------------


def test_a_target_naming_another_target_s_secret_is_broken_and_that_secret_never_leaves(
    stack: ForwarderStack,
    lambda_driver: LambdaSqsDriver,
    airflow: Callable[..., FakeAirflow],
    forwarder_logs: LogCapture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    team_c_token = "team-c-SECRET-0d1e2f3a4b"
    attacker = airflow("3", auth="bearer", token=team_c_token)  # would accept team C's token
    attacker.add_dataset(BEARS)
    team_c_secret = stack.put_secret("team-c", team_c_token)
    stack.put_target(
        "team-b", {"url": attacker.url, "datasets": [BEARS], "auth": {"type": "bearer", "secret": team_c_secret}}
    )
    stack.send(envelope(BEARS))  # routed by subscription
    stack.send(envelope(BEARS, only_targets=["team-b"]))  # a redrive aimed at it

    lambda_driver.drain()

    assert attacker.requests == []  # the secret was never fetched for it, so never sent
    assert team_c_token not in "".join(a or "" for a in attacker.authorizations)
    [letter] = stack.dead_letters(expected=1)
    assert letter.attributes["error"] == "invalid_target"
    assert letter.attributes["target"] == "team-b"
    assert f"must be the parameter {stack.secrets_path}/team-b or one below it" in letter.attributes["detail"]
    assert UNCONFIRMED not in letter.attributes
    out = capsys.readouterr().out
    assert metric_total(out, INVALID_TARGET_CONFIG, "team-b") >= 1
    assert team_c_token not in out + forwarder_logs.text


def test_a_token_pasted_into_auth_secret_is_never_echoed(
    stack: ForwarderStack,
    lambda_driver: LambdaSqsDriver,
    airflow: Callable[..., FakeAirflow],
    everything_seen: SeenByOperator,
) -> None:
    pasted = "pasted-TOKEN-5b8e1f0a9c77"
    fake = airflow("3", auth="bearer", token=pasted)
    fake.add_dataset(BEARS)
    stack.put_target("team-b", {"url": fake.url, "datasets": [BEARS], "auth": {"type": "bearer", "secret": pasted}})
    stack.send(envelope(BEARS))
    stack.send(envelope(BEARS, only_targets=["team-b"]))

    lambda_driver.drain()
    cli_output = cli_outputs(stack, ["targets", "list"], ["targets", "list", "--json"], ["dlq", "list", "--json"])

    letters = stack.dead_letters(expected=1)
    seen = everything_seen(letters)
    assert pasted not in seen + cli_output
    assert "BROKEN" in cli_output  # the operator sees the target and its letter, without the value
    assert "invalid_target" in cli_output
    assert [d.attributes["error"] for d in letters] == ["invalid_target"]
    assert "'auth.secret' must be the parameter" in letters[0].attributes["detail"]  # the reason, not the value
    assert fake.requests == []


# -- point 3: a broken target keeps its events; one parameter breaks only itself -------------------------------


def test_a_target_that_turns_invalid_keeps_serving_its_last_good_version(
    stack: ForwarderStack,
    lambda_driver: LambdaSqsDriver,
    served_target: Callable[..., FakeAirflow],
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake = served_target(BEARS)
    stack.send(envelope(BEARS))
    lambda_driver.drain()
    assert len(fake.events) == 1
    capsys.readouterr()

    # CONFIG_TTL_S=0: the next record re-reads the parameter, which no longer parses
    stack.put_target("team-b", {"url": fake.url, "airflow": "3", "datasets": [BEARS], "timeout_s": "soon"})
    stack.send(envelope(BEARS, extra={"after": "broken"}))
    lambda_driver.drain()

    assert len(fake.events) == 2  # delivered with the last good settings, not acknowledged as unrouted
    assert fake.events[1].extra["after"] == "broken"
    assert stack.dead_letters(expected=0, timeout_s=1) == []
    assert metric_total(capsys.readouterr().out, INVALID_TARGET_CONFIG, "team-b") >= 1


def test_a_parameter_that_cannot_be_parsed_marks_only_itself_broken(
    stack: ForwarderStack,
    lambda_driver: LambdaSqsDriver,
    served_target: Callable[..., FakeAirflow],
    capsys: pytest.CaptureFixture[str],
) -> None:
    stack.put_target("hostile", "[" * 3000)  # json.loads raises RecursionError on it
    fake = served_target(BEARS)
    message_id = stack.send(envelope(BEARS))

    first = polled(lambda_driver)

    assert first.failed_ids == set()
    assert [i for i in first.failed_ids if i == message_id] == []
    assert len(fake.events) == 1
    assert metric_total(capsys.readouterr().out, INVALID_TARGET_CONFIG, "hostile") >= 1


# -- point 4: a timeout that can never fit is refused when the target is read ----------------------------------


def test_a_timeout_the_function_timeout_cannot_fit_is_refused_when_the_target_is_read(
    stack: ForwarderStack,
    lambda_driver: LambdaSqsDriver,
    served_target: Callable[..., FakeAirflow],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dataset_forwarder import runtime

    monkeypatch.setenv("FUNCTION_TIMEOUT_S", "60")  # 2 calls x 29 s + 3 s margin > 60 s
    runtime.reset()
    fake = served_target(BEARS, name="slow", timeout_s=29)
    stack.send(envelope(BEARS, only_targets=["slow"]))

    invocations = lambda_driver.drain()

    assert len(invocations) == 1  # refused at once, not retried until the attempts run out
    [letter] = stack.dead_letters(expected=1)
    assert letter.attributes["error"] == "invalid_target"
    assert "'timeout_s' 29 cannot fit in the function's timeout: at most 28.5 here" in letter.attributes["detail"]
    assert fake.requests == []


# -- point 5: a hostile upstream cannot flood the DLQ ----------------------------------------------------------


def test_unknown_only_targets_names_make_one_dead_letter_and_no_downstream_call(
    stack: ForwarderStack, lambda_driver: LambdaSqsDriver, served_target: Callable[..., FakeAirflow]
) -> None:
    from dataset_forwarder.envelope import MAX_ONLY_TARGETS

    fake = served_target(BEARS)
    unknown = [f"nobody-{i:03d}-" + "x" * 2000 for i in range(MAX_ONLY_TARGETS)]  # ~200 KiB of names
    stack.send(envelope(BEARS, only_targets=unknown))

    lambda_driver.drain()

    [letter] = stack.dead_letters(expected=1, timeout_s=2)
    assert letter.attributes["error"] == "invalid_target"
    assert letter.envelope["only_targets"] == unknown  # a redrive is aimed at exactly these names
    assert len(letter.attributes["detail"]) <= 1000
    assert f"{MAX_ONLY_TARGETS} targets named in only_targets do not exist" in letter.attributes["detail"]
    assert len(letter.attributes["target"]) <= 256
    assert letter.attributes["target"].startswith("nobody-000-")
    assert UNCONFIRMED not in letter.attributes
    assert fake.requests == []


def test_only_targets_over_the_cap_is_one_invalid_message_letter(
    stack: ForwarderStack, lambda_driver: LambdaSqsDriver, served_target: Callable[..., FakeAirflow]
) -> None:
    from dataset_forwarder.envelope import MAX_ONLY_TARGETS

    fake = served_target(BEARS)
    names = ["team-b", *(f"n{i}" for i in range(26_000))]  # ~235 KiB: 26,000 letters before the cap
    body = json.dumps(envelope(BEARS, only_targets=names), separators=(",", ":"))
    assert 200 * 1024 < len(body.encode()) < 256 * 1024
    stack.send(body)

    lambda_driver.drain()

    [letter] = stack.dead_letters(expected=1, timeout_s=2)
    assert letter.attributes["error"] == "invalid_message"
    assert letter.attributes["target"] == "-"
    assert f"'only_targets' names more than {MAX_ONLY_TARGETS} targets" in letter.attributes["detail"]
    assert fake.requests == []


def test_known_and_unknown_only_targets_names_deliver_the_known_and_one_letter_for_the_rest(
    stack: ForwarderStack, lambda_driver: LambdaSqsDriver, served_target: Callable[..., FakeAirflow]
) -> None:
    fake = served_target(BEARS)
    stack.put_target("off", {"url": fake.url, "airflow": "3", "datasets": [BEARS], "enabled": False})
    stack.send(envelope(BEARS, only_targets=["ghost-1", "team-b", "off", "ghost-2", "ghost-1"]))

    lambda_driver.drain()

    assert len(fake.events) == 1
    letters = sorted(stack.dead_letters(expected=2, timeout_s=2), key=lambda d: d.attributes["target"])
    assert [d.attributes["target"] for d in letters] == ["ghost-1,ghost-2", "off"]
    assert [d.envelope["only_targets"] for d in letters] == [["ghost-1", "ghost-2"], ["off"]]
    assert "ghost-1, ghost-2" in letters[0].attributes["detail"]
    assert "disabled" in letters[1].attributes["detail"]
