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
- ``retention``      which old versions and leftover uploads to remove (a pure choice), and removing them
- ``progress``       upload progress on stderr
- ``layout``, ``names``, ``errors``: the host layout contract, name/path checks, error types

The deploy orchestration on top (observe -> plan -> act):

- ``observe``        read one host's state (config, TF Serving, published, verified)
- ``plan``           the steps a deploy takes on a host: a pure function of that state
- ``apply``          write models.config then reload over gRPC; bounded load/label/unload waits
- ``smoke``          signature / golden outputs / latency verdicts and the smoke test itself
- ``host_run``       execute one host's plan, phase by phase; restore the host exactly on failure
- ``options``        the deploy's settings (``DeployOptions``), one value passed everywhere
- ``rollout``        the rollout's shape: canary, then waves (pure)
- ``parallel``       bounded thread pools for the per-host work of a phase
- ``metrics_windows`` TF Serving's metrics page parsed into snapshots, and the windows between them (pure)
- ``bake_stats``     the bake's statistics: histogram quantiles and moments, exact binomial tails (pure)
- ``bake``           judge the canary on its live traffic: the verdict and its one line (pure)
- ``metrics_scrape`` read one host's metrics page over HTTP, bounded in size and time
- ``canary``         the bake: read the hosts' metrics around a switch and judge each switched host
- ``store``          a shared S3 store: upload a version once, hosts pull it with presigned URLs
- ``fleet``          the rollout: prepare every host in parallel, switch a canary, bake, then waves,
                     all-new or all-old (the state machine)
- ``resolve``        which version a deploy installs (``production`` or ``--version N``)
- ``fleet_plan``     observe every host and plan it, changing nothing (also ``mlops sync plan``)
- ``rollout_decision`` canary, waves and bake for the hosts that change, or a restore at once (pure)
- ``deploy_retention`` after a deploy that succeeded: each host's and the store's retention
- ``deploy_failure`` what a failed rollout does: put every host back, move ``production`` back when
                     the version is to blame, tag it, one message
- ``connections``    open every host and take every lock (fixed order, bounded wait)
- ``verified``       which versions passed the smoke test on a host (host-side record)
- ``cancel``         SIGTERM / Ctrl-C stop a deploy at a safe point (then its hosts are put back)
- ``golden``         what a deploy needs from the registry (golden set, SavedModel)
- ``status``, ``smoke_hosts``: read-only checks; ``watch``, ``webhook``: the reconcile loop;
  ``rollback``: registry rollback then deploy; ``infra``: infra-validate in a throw-away server
"""
