"""Run the forwarder on one machine: moto server with the stack from template.yaml, a Lambda-like SQS poller."""
