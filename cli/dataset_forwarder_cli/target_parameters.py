"""Target parameters and their secrets in SSM Parameter Store, parsed and validated by the forwarder's own code."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from dataset_forwarder.targets import (
    Catalog,
    InvalidTarget,
    ParseRules,
    Target,
    build_catalog,
    parse_target,
    validate_name,
)

from .errors import CliError


@dataclass
class TargetParameters:
    ssm: Any
    targets_path: str
    secrets_path: str

    def parameter_name(self, name: str) -> str:
        return f"{self.targets_path.rstrip('/')}/{validate_name(name)}"

    def secret_name(self, name: str) -> str:
        return f"{self.secrets_path.rstrip('/')}/{validate_name(name)}"

    def rules(self, *, allow_http: bool = True) -> ParseRules:
        """The function's rules as far as the CLI knows them: the IAM allow-lists are the stack's to enforce."""
        return ParseRules(
            allow_http=allow_http, secrets_path=self.secrets_path, mwaa_environments=("*",), role_arns=("*",)
        )

    def catalog(self, *, allow_http: bool = True) -> Catalog:
        raw: dict[str, str] = {}
        for page in self.ssm.get_paginator("get_parameters_by_path").paginate(
            Path=self.targets_path, Recursive=True, WithDecryption=True
        ):
            for parameter in page.get("Parameters", []):
                raw[parameter["Name"][len(self.targets_path) :].lstrip("/")] = parameter["Value"]
        return build_catalog(raw, rules=self.rules(allow_http=allow_http))

    def get(self, name: str, *, allow_http: bool = True) -> Target:
        from botocore.exceptions import ClientError

        try:
            value = self.ssm.get_parameter(Name=self.parameter_name(name), WithDecryption=True)["Parameter"]["Value"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ParameterNotFound":
                raise CliError(f"target '{name}' not found under {self.targets_path}") from None
            raise
        try:
            return parse_target(name, value, rules=self.rules(allow_http=allow_http))
        except InvalidTarget as exc:
            raise CliError(f"target '{name}' in SSM is malformed: {exc}") from None

    def put(self, target: Target, *, secret: str | None) -> None:
        """Write the secret first (SecureString), then the target that names it."""
        if secret is not None and target.secret:
            self.ssm.put_parameter(Name=target.secret, Value=secret, Type="SecureString", Overwrite=True)
        self.ssm.put_parameter(
            Name=self.parameter_name(target.name),
            Value=json.dumps(target.to_json(), separators=(",", ":")),
            Type="String",
            Overwrite=True,
        )

    def secret_exists(self, parameter: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.ssm.get_parameter(Name=parameter, WithDecryption=False)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ParameterNotFound":
                return False
            raise
        return True

    def delete(self, target: Target, *, keep_secret: bool) -> list[str]:
        deleted = [self.parameter_name(target.name)]
        self.ssm.delete_parameter(Name=deleted[0])
        secret = target.secret
        if not keep_secret and secret and secret.startswith(self.secrets_path.rstrip("/") + "/"):
            from botocore.exceptions import ClientError

            try:
                self.ssm.delete_parameter(Name=secret)
                deleted.append(secret)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ParameterNotFound":
                    raise
        return deleted

    def read_secret(self, parameter: str, *, fresh: bool = False) -> str:
        return str(self.ssm.get_parameter(Name=parameter, WithDecryption=True)["Parameter"]["Value"])
