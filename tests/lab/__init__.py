"""The test lab: real local services and model versions for the tests and the benchmarks.

One module per job, imported by public name (the pytest fixtures in tests/fixtures/ are thin
wrappers over these; ``benchmarks/`` import only public names from here, which
tests/test_architecture.py checks):

- ``models``: tiny real SavedModels built in a TensorFlow subprocess (``build_models``,
  ``ModelSpec``, ``DEPLOY_MODELS``, ``CANARY_MODELS``).
- ``bundles``: the deploy tests' bundles ``a``, ``b``, ``c``, ``big`` and their broken variants
  (``build_bundles``, ``DeployBundles``).
- ``tfserving``: a local TF-Serving-compatible server (``make_factory``, ``TFServingHandle``).
- ``servers``: a pool of those servers shared by a session (``ServerPool``).
- ``sshd``: real OpenSSH servers on loopback (``start_sshd``, ``keygen``, ``SshdServer``).
- ``s3``: a real S3 server, SeaweedFS (``start_weed``, ``stop_weed``, ``S3Server``).
- ``s3mirror``: a bucket copied to the folder a local server reads (``S3Mirror``).
- ``netfaults``: a loopback TCP proxy that cuts connections (``CutProxy``).
- ``hosts``: serving hosts behind file/ssh/s3 targets and the hosts file (``HostFleet``,
  ``ServingHost``).
- ``registry``: register a bundle as a version, promote, read back (``ModelRegistry``).
- ``traffic``: which version answered (``identify``) and requests during a deploy (``Traffic``).
- ``deploy_env``: one model's deploy world put together (``DeployEnv``).
- ``circleci``: runs a workflow of .circleci/config.yml on this machine (``LocalCircleCI``).
"""
