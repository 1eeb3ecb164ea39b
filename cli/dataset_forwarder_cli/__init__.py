"""`dataset-forwarder`: the operator CLI (targets in SSM, dead letters in SQS), reusing the forwarder's core."""
