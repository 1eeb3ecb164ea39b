"""What every command needs: AWS clients (created on first use), SSM paths, queue URLs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from .errors import CliError

DEFAULT_TARGETS_PATH = "/dataset-forwarder/targets"
DEFAULT_SECRETS_PATH = "/dataset-forwarder/secrets"


@dataclass
class AppContext:
    region: str | None = None
    stack_name: str | None = None
    queue_url_option: str | None = None
    dlq_url_option: str | None = None
    targets_path: str = DEFAULT_TARGETS_PATH
    secrets_path: str = DEFAULT_SECRETS_PATH
    aws_env: dict[str, str] = field(default_factory=dict)  # AWS_* settings that win over the caller's (--local)
    _clients: dict[str, Any] = field(default_factory=dict)
    _outputs: dict[str, str] | None = None

    @classmethod
    def for_local_stack(cls) -> AppContext:
        """The running local stack's queues, SSM paths, endpoint and fake credentials (`dataset-forwarder local up`)."""
        from .local.commands import default_state_dir, is_our_process, read_state

        state_dir = default_state_dir()
        state = read_state(state_dir)
        if state is None or not is_our_process(int(state.get("pid", 0))):
            raise CliError(f"--local: no local stack is running (state in {state_dir}): `dataset-forwarder local up`")
        from .local.stack import DeployedStack

        env = DeployedStack.from_json(state["stack"]).cli_env()
        return cls(
            region=env["AWS_REGION"],
            queue_url_option=env["DATASET_FORWARDER_QUEUE_URL"],
            dlq_url_option=env["DEAD_LETTER_QUEUE_URL"],
            targets_path=env["TARGETS_PATH"],
            secrets_path=env["SECRETS_PATH"],
            aws_env=env,
        )

    def client(self, service: str) -> Any:
        if service not in self._clients:
            import boto3
            from botocore.config import Config

            config = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5, read_timeout=20)
            session = boto3.session.Session(
                region_name=self.region,
                aws_access_key_id=self.aws_env.get("AWS_ACCESS_KEY_ID"),
                aws_secret_access_key=self.aws_env.get("AWS_SECRET_ACCESS_KEY"),
            )
            self._clients[service] = session.client(
                service, config=config, endpoint_url=self.aws_env.get("AWS_ENDPOINT_URL")
            )
        return self._clients[service]

    def _stack_outputs(self) -> dict[str, str]:
        if self._outputs is None:
            if not self.stack_name:
                self._outputs = {}
            else:
                stacks = self.client("cloudformation").describe_stacks(StackName=self.stack_name)["Stacks"]
                self._outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
        return self._outputs

    def _queue(self, option: str | None, output_key: str, env_key: str, what: str) -> str:
        url = option or self._stack_outputs().get(output_key) or os.environ.get(env_key)
        if not url:
            raise CliError(f"no {what} URL: pass --stack-name or the URL option, or set {env_key}")
        return url

    @property
    def queue_url(self) -> str:
        return self._queue(self.queue_url_option, "EventsQueueUrl", "DATASET_FORWARDER_QUEUE_URL", "events queue")

    @property
    def dlq_url(self) -> str:
        return self._queue(self.dlq_url_option, "DeadLetterQueueUrl", "DEAD_LETTER_QUEUE_URL", "dead-letter queue")
