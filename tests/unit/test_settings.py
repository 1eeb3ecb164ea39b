"""Settings.from_env (docs/operate.md): required variables, defaults, and errors that name the variable."""

from __future__ import annotations

import pytest

from dataset_forwarder.settings import DEFAULT_TARGETS_PATH, Settings, SettingsError

DLQ_URL = "https://sqs.eu-west-1.amazonaws.com/123456789012/dataset-forwarder-dlq"
TABLE = "dataset-forwarder-idempotency"


def env(**values: str) -> dict[str, str]:
    return {"DEAD_LETTER_QUEUE_URL": DLQ_URL, "IDEMPOTENCY_TABLE": TABLE, **values}


def error_for(values: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(values)
    return str(caught.value)


def test_defaults_with_only_required_variables() -> None:
    settings = Settings.from_env(env())

    assert settings == Settings(dead_letter_queue_url=DLQ_URL, idempotency_table=TABLE)
    assert settings.targets_path == DEFAULT_TARGETS_PATH == "/dataset-forwarder/targets"
    assert settings.max_attempts == 5
    assert settings.config_ttl_s == 60
    assert settings.allow_http_targets is False


def test_every_variable_is_read() -> None:
    settings = Settings.from_env(
        env(
            TARGETS_PATH="/team/targets",
            MAX_ATTEMPTS="3",
            CONFIG_TTL_S="0",
            ALLOW_HTTP_TARGETS="true",
            RETRY_BASE_DELAY_S="2.5",
            RETRY_MAX_DELAY_S="120",
            MAX_WORKERS="8",
            IDEMPOTENCY_TTL_S="3600",
        )
    )

    assert settings == Settings(
        dead_letter_queue_url=DLQ_URL,
        idempotency_table=TABLE,
        targets_path="/team/targets",
        max_attempts=3,
        config_ttl_s=0,
        allow_http_targets=True,
        retry_base_delay_s=2.5,
        retry_max_delay_s=120,
        max_workers=8,
        idempotency_ttl_s=3600,
    )


def test_empty_and_blank_optional_variables_mean_default() -> None:
    settings = Settings.from_env(env(MAX_ATTEMPTS="", CONFIG_TTL_S="  ", ALLOW_HTTP_TARGETS="", TARGETS_PATH=" "))
    assert settings == Settings(dead_letter_queue_url=DLQ_URL, idempotency_table=TABLE)


def test_surrounding_whitespace_is_ignored() -> None:
    settings = Settings.from_env(
        {"DEAD_LETTER_QUEUE_URL": f" {DLQ_URL} ", "IDEMPOTENCY_TABLE": f"{TABLE}\n", "MAX_ATTEMPTS": " 7 "}
    )
    assert settings.dead_letter_queue_url == DLQ_URL
    assert settings.idempotency_table == TABLE
    assert settings.max_attempts == 7


@pytest.mark.parametrize("name", ["DEAD_LETTER_QUEUE_URL", "IDEMPOTENCY_TABLE"])
def test_missing_required_variable_is_named(name: str) -> None:
    values = env()
    del values[name]
    assert name in error_for(values)


@pytest.mark.parametrize("name", ["DEAD_LETTER_QUEUE_URL", "IDEMPOTENCY_TABLE"])
def test_blank_required_variable_is_named(name: str) -> None:
    assert name in error_for(env(**{name: "   "}))


@pytest.mark.parametrize("raw", ["true", "TRUE", "1", "yes", "on", " On "])
def test_truthy_allow_http_values(raw: str) -> None:
    assert Settings.from_env(env(ALLOW_HTTP_TARGETS=raw)).allow_http_targets is True


@pytest.mark.parametrize("raw", ["false", "False", "0", "no", "off"])
def test_falsy_allow_http_values(raw: str) -> None:
    assert Settings.from_env(env(ALLOW_HTTP_TARGETS=raw)).allow_http_targets is False


def test_bad_bool_names_the_variable() -> None:
    message = error_for(env(ALLOW_HTTP_TARGETS="maybe"))
    assert "ALLOW_HTTP_TARGETS" in message
    assert "true or false" in message
    assert "'maybe'" in message


@pytest.mark.parametrize(
    "name", ["MAX_ATTEMPTS", "CONFIG_TTL_S", "RETRY_MAX_DELAY_S", "MAX_WORKERS", "IDEMPOTENCY_TTL_S"]
)
@pytest.mark.parametrize("raw", ["five", "0x10", "5.5"])
def test_non_integer_names_the_variable_and_the_value(name: str, raw: str) -> None:
    message = error_for(env(**{name: raw}))
    assert name in message
    assert "must be" in message
    assert repr(raw) in message


@pytest.mark.parametrize("name", ["MAX_ATTEMPTS", "MAX_WORKERS"])
def test_fractional_value_of_integer_variable_says_integer(name: str) -> None:
    assert "integer" in error_for(env(**{name: "5.5"}))


def test_non_number_base_delay_names_the_variable() -> None:
    message = error_for(env(RETRY_BASE_DELAY_S="ten"))
    assert "RETRY_BASE_DELAY_S" in message
    assert "number" in message


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("MAX_ATTEMPTS", "0"),
        ("MAX_ATTEMPTS", "101"),
        ("CONFIG_TTL_S", "-1"),
        ("CONFIG_TTL_S", "86401"),
        ("RETRY_BASE_DELAY_S", "-0.5"),
        ("RETRY_BASE_DELAY_S", "901"),
        ("RETRY_MAX_DELAY_S", "43201"),
        ("MAX_WORKERS", "0"),
        ("MAX_WORKERS", "513"),
        ("IDEMPOTENCY_TTL_S", "59"),
    ],
)
def test_out_of_range_value_names_the_variable_and_the_range(name: str, raw: str) -> None:
    message = error_for(env(**{name: raw}))
    assert name in message
    assert "between" in message


@pytest.mark.parametrize(("name", "raw"), [("MAX_ATTEMPTS", "1"), ("MAX_ATTEMPTS", "100"), ("MAX_WORKERS", "512")])
def test_range_bounds_are_inclusive(name: str, raw: str) -> None:
    Settings.from_env(env(**{name: raw}))


def test_targets_path_must_start_with_a_slash() -> None:
    message = error_for(env(TARGETS_PATH="dataset-forwarder/targets"))
    assert "TARGETS_PATH" in message
    assert "'/'" in message


def test_targets_path_trailing_slash_is_removed() -> None:
    assert Settings.from_env(env(TARGETS_PATH="/team/targets/")).targets_path == "/team/targets"


def test_targets_path_root_stays_root() -> None:
    assert Settings.from_env(env(TARGETS_PATH="/")).targets_path == "/"


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEAD_LETTER_QUEUE_URL", DLQ_URL)
    monkeypatch.setenv("IDEMPOTENCY_TABLE", TABLE)
    monkeypatch.setenv("MAX_ATTEMPTS", "9")

    assert Settings.from_env().max_attempts == 9
