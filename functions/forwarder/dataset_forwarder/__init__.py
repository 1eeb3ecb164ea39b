"""The forwarder's core: envelope, targets, routing, delivery to Airflow, dead letters.

Nothing here creates AWS clients at import time; `runtime.build()` wires the real ones.
"""

import logging

# Registered here so the Lambda handler can give the whole package Powertools' JSON logging.
logging.getLogger(__name__).addHandler(logging.NullHandler())
