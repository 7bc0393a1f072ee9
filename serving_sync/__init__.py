"""Reconcile TensorFlow Serving hosts to the registry: the building blocks of ``mlops sync``.

One job per module (no TensorFlow import anywhere in this package; MLflow only inside
functions that need it):

- ``hosts``          parse and validate the hosts file (or one host from the environment)
- ``transports``     file://, ssh:// (paramiko) and s3:// (boto3) behind one ``Transport`` API
- ``manifest``       sha256 manifest of a SavedModel tree; compare with what a host reports
- ``publish``        atomic, verified, idempotent publish of ``<base>/<model>/<version>/``
- ``models_config``  build / parse ``models.config`` (ModelServerConfig text format), pure
- ``host_config``    read / write a host's ``models.config`` through its transport
- ``tfs_client``     TF Serving REST client and bounded wait helpers
- ``tfs_reload``     gRPC ``HandleReloadConfigRequest`` without importing TensorFlow
- ``lock``           one deploy at a time per host (lock file with owner and heartbeat)
- ``retention``      which old versions and leftover uploads to remove (pure functions)
- ``progress``       upload progress on stderr
- ``layout``, ``names``, ``errors``: the host layout contract, name/path checks, error types
"""
