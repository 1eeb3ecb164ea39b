"""The project's development kit: what tests, benchmarks and the demo share (never shipped; devkit/pyproject.toml).

- `airflow_env`: real Apache Airflow, cached per-version venvs and throwaway deployments driven over REST;
- `local_forwarding`: `dataset-forwarder local up` in the background, DAG sources, what happened on both sides;
- `listener_support`: moto's SQS for upstream listeners, envelope checks, unreachable endpoints, `airflow dags test`;
- `airflow_api`: the fake Airflow 2/3 REST APIs (and MWAA's) on 127.0.0.1, with faults;
- `aws`: a forwarder stack made of moto resources, named per test, and its dead letters;
- `moto_env`: moto server (the local stack's own starter) in a process of its own, the fake AWS environment, ports;
- `envelopes`: the reference envelope v1 as the listener writes it;
- `downstream`, `lambda_sqs`, `sqs_proxy`: a per-target face over the forwarder's downstreams, Lambda's SQS event
  source in a test, and an SQS proxy that spoils replies;
- `layer_report`: what `sam build` put in the dependencies layer;
- `paths`: where the checkout's parts are.
"""
