"""Airflow listener plugin of the dataset forwarder: sends this deployment's dataset/asset events to SQS."""

__version__ = "0.1.0"
