"""The one moto starter (`MotoServer` of the local stack, which devkit re-uses): in a process of its own or in a
thread, its port refused while it runs, and ports that are never handed out twice."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from dataset_forwarder_cli.local.stack import RESERVED_PORTS, LocalStackError
from devkit.moto_env import MotoServer, aws_session, free_port


def _answers(server: MotoServer) -> bool:
    sqs = aws_session().client("sqs", endpoint_url=server.endpoint)
    url = sqs.create_queue(QueueName="probe")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="hello")
    messages = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0).get("Messages", [])
    return [m["Body"] for m in messages] == ["hello"]


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


def test_in_a_process_of_its_own_it_logs_answers_and_is_gone_after_stop(tmp_path: Path) -> None:
    log = tmp_path / "moto.log"
    with MotoServer(log_path=log) as server:
        assert _answers(server)
        assert log.is_file()
        process = server._process
        assert process is not None
        assert process.poll() is None  # moto runs in that process, not in this one
    assert process.poll() is not None
    assert _refused(server.port)


def test_in_a_thread_it_answers_and_a_second_one_on_its_port_is_refused() -> None:
    with MotoServer() as server:
        assert _answers(server)
        with pytest.raises(LocalStackError, match="already in use"):
            MotoServer(server.port).start()
    assert _refused(server.port)


def test_free_port_never_hands_out_a_port_twice_nor_one_of_airflows() -> None:
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert not set(ports) & RESERVED_PORTS
