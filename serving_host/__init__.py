"""The serving host: the end of the wire that runs TensorFlow Serving.

- ``install_server.sh`` prepares a Linux host and runs the real ``tensorflow/serving`` image.
- ``python -m serving_host.local_server`` is a local TensorFlow-Serving-compatible server for the
  embedded default, the tests and CI, where ``tensorflow_model_server`` cannot run. Production
  uses real TensorFlow Serving.

This package stands alone: it imports nothing from the rest of the project (the sync code talks
to it only over REST/gRPC and the shared file formats).
"""
