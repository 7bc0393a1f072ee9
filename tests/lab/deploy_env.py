"""``DeployEnv``: one model's deploy world — its hosts, its registered versions, and what answers.

Given the ``mlops_env`` environment (a real MLflow server, a fresh MLOPS_HOME and model name),
the :class:`~tests.lab.bundles.DeployBundles` and a server factory/pool, it puts together the
lab's jobs: a :class:`~tests.lab.hosts.HostFleet` (``add_host(kind="file"|"ssh"|"s3", grpc=True)``,
``add_hosts(n, ...)``, ``write_hosts_file()``, ``config_text(host)``), a
:class:`~tests.lab.registry.ModelRegistry` (``register(kind)`` logs a bundle as a run and
registers it with validation_status=passed, ``promote(v)``, ``production()``, ``tags(v)``,
``ledger()``), ``deploy(**kw)`` (``serving_sync.fleet.deploy`` in-process), ``cli(*args)`` (the
real ``mlops`` in a subprocess with this environment), and checks through TF Serving's REST API:
``which(host, **route)`` tells which registered version answered a route (by its outputs),
``serves(host, v)`` asserts every route serves ``v``, ``traffic(host)`` starts a bounded
background loop of unversioned + ``stable`` requests (``.stop()`` -> failures).

The ``deploy_env`` fixture (tests/fixtures/deploy_env.py) builds one per test; the benchmarks'
``Lab`` builds them on its own services.
"""
from __future__ import annotations

import os
from pathlib import Path

import requests

from tests.helpers import run_mlops
from tests.lab.bundles import ANSWERING, DeployBundles
from tests.lab.hosts import HostFleet, ServingHost
from tests.lab.registry import EXPERIMENT, ModelRegistry
from tests.lab.servers import ServerPool
from tests.lab.traffic import Traffic, identify


def deploy_opts(**kw):
    """The options a deploy test deploys with: ``--json``, a 60 s ``--timeout`` unless ``kw`` says,
    and ``kw``."""
    from serving_sync.options import DeployOptions

    return DeployOptions(timeout=kw.pop("timeout", 60.0), json_mode=True, **kw)


def v1_then_promote_v2(env: DeployEnv) -> tuple[int, int]:
    """v1 released to every host (no canary), v2 registered and promoted, not yet deployed: the
    start of a test about the next deploy. ``(v1, v2)``."""
    v1 = env.release("a", opts=deploy_opts(canary=0))
    v2 = env.register("b")
    env.promote(v2)
    return v1, v2


class DeployEnv:
    def __init__(self, env: dict, bundles: DeployBundles, tmp: Path, factory, sshd_factory=None, s3=None,
                 pool: ServerPool | None = None):
        self.env, self.bundles, self.tmp = env, bundles, tmp
        self.fleet = HostFleet(self.model, self.hosts_file, tmp, factory, pool=pool, sshd_factory=sshd_factory,
                               s3=s3)
        self.registry = ModelRegistry(self.model)
        self.versions: dict[int, str] = {}      # version -> the bundle kind whose outputs it answers

    @property
    def model(self) -> str:
        return self.env["MLOPS_MODEL_NAME"]

    @property
    def hosts_file(self) -> Path:
        return Path(self.env["MLOPS_HOME"]) / "hosts.toml"

    # hosts (the fleet's) -----------------------------------------------------------------
    @property
    def hosts(self) -> list[ServingHost]:
        return self.fleet.hosts

    @property
    def factory(self):
        return self.fleet.factory

    @property
    def s3(self):
        return self.fleet.s3

    def add_host(self, kind: str = "file", **kw) -> ServingHost:
        return self.fleet.add_host(kind, **kw)

    def add_hosts(self, n: int, kind: str = "file", **kw) -> list[ServingHost]:
        return self.fleet.add_hosts(n, kind, **kw)

    def add_monitored_hosts(self, n: int, kind: str = "file") -> list[ServingHost]:
        """``n`` hosts whose servers serve TF Serving's Prometheus page (``--monitoring_config_file``,
        as serving_host/install_server.sh starts real TF Serving): what a canary bake reads. File and
        ssh hosts borrow monitored servers from the pool (the page's lines are per model name)."""
        from mlops.local_services import MONITORING_CONFIG

        pool = self.fleet.pool
        if pool is not None and kind != "s3":
            cfg = pool.monitoring_config()
        else:
            cfg = self.tmp / "monitoring.config"
            cfg.write_text(MONITORING_CONFIG)
        return self.add_hosts(n, kind, server_args=(f"--monitoring_config_file={cfg}",), pooled=pool is not None)

    def write_hosts_file(self, hosts: list[ServingHost] | None = None) -> Path:
        return self.fleet.write_hosts_file(hosts)

    def config_text(self, host: ServingHost) -> str:
        return self.fleet.config_text(host)

    def _sshd(self):
        return self.fleet.sshd()

    # registry ----------------------------------------------------------------------------
    def register(self, kind: str, *, validation_status: str = "passed") -> int:
        return self.register_bundle(self.bundles.path(kind), kind, validation_status=validation_status,
                                    tags={"dataset": "digits"})

    def register_bundle(self, folder: Path, kind: str, *, like: str | None = None, tags: dict | None = None,
                        validation_status: str = "passed", experiment: str = EXPERIMENT) -> int:
        """Register a bundle folder built elsewhere (tagged ``fixture_kind=kind``); its outputs are
        those of the bundle kind ``like`` (default: ``kind``)."""
        v = self.registry.register_bundle(folder, f"{self.model}-{kind}", tags={**(tags or {}), "fixture_kind": kind},
                                          validation_status=validation_status, experiment=experiment)
        self.versions[v] = like or kind
        return v

    def promote(self, v: int) -> None:
        self.registry.promote(v)

    def production(self) -> int | None:
        return self.registry.production()

    def tags(self, v: int) -> dict:
        return self.registry.tags(v)

    def ledger(self, actions=None) -> list:
        return self.registry.ledger(actions)

    # deploy ------------------------------------------------------------------------------
    def deploy(self, **kw):
        from serving_sync import fleet
        from serving_sync.hosts import load_hosts
        opts = kw.pop("opts", None) or deploy_opts(timeout=kw.pop("timeout", 60.0))
        return fleet.deploy(self.model, load_hosts(), opts=opts, **kw)

    def release(self, kind: str = "a", **deploy_kw) -> int:
        """Register ``kind``, promote it and deploy it to every host; its version. The usual first
        step of a test about the next deploy (fails the test if this one does not succeed)."""
        v = self.register(kind)
        self.promote(v)
        r = self.deploy(**deploy_kw)
        assert r.status == "deployed", r.message
        return v

    def cli(self, *args: str, timeout: float = 300, extra_env: dict | None = None):
        env = {**os.environ, **self.env, **(extra_env or {})}
        return run_mlops(*args, env=env, timeout=timeout)

    # what answers ------------------------------------------------------------------------
    def known(self) -> dict[int, list]:
        return {v: self.bundles.golden(k)["response"]["predictions"] for v, k in self.versions.items()
                if k in ANSWERING}

    def predict(self, host: ServingHost, *, version: int | None = None, label: str | None = None,
                model: str | None = None) -> requests.Response:
        url = f"{host.rest_url}/v1/models/{model or self.model}"
        if version is not None:
            url += f"/versions/{version}"
        elif label is not None:
            url += f"/labels/{label}"
        return requests.post(url + ":predict", json=self.bundles.golden("a")["request"], timeout=10)

    def which(self, host: ServingHost, **route) -> int | None:
        """The registered version whose golden outputs this route answers (None: an error)."""
        r = self.predict(host, **route)
        if r.status_code != 200:
            return None
        return identify(r.json()["predictions"], self.known())

    def states(self, host: ServingHost, model: str | None = None) -> dict[int, str]:
        return host.server.version_states(model or self.model)

    def label(self, host: ServingHost, label: str = "stable") -> int | None:
        r = requests.get(f"{host.rest_url}/v1/models/{self.model}/labels/{label}/metadata", timeout=10)
        return int(r.json()["model_spec"]["version"]) if r.status_code == 200 else None

    def traffic(self, host: ServingHost) -> Traffic:
        return Traffic(host.rest_url, self.model, self.bundles.golden("a")["request"], self.known()).start()

    def answers_like(self, host: ServingHost, v: int, **route) -> bool:
        """Whether a route answers ``v``'s golden outputs (true also for another version registered
        from the same bundle: outputs cannot tell those apart; the label and states can)."""
        r = self.predict(host, **route)
        golden = self.bundles.golden(self.versions[v])["response"]["predictions"]
        return r.status_code == 200 and identify(r.json()["predictions"], {v: golden}) == v

    def serves(self, host: ServingHost, v: int) -> None:
        """Assert, through TF Serving's REST API, that ``host`` serves ``v`` on every route: the
        label points at it, it is the highest AVAILABLE version (unversioned requests), and every
        route answers its golden outputs."""
        assert self.label(host) == v, f"{host.name}: stable -> {self.label(host)}, expected v{v}"
        available = [x for x, st in self.states(host).items() if st == "AVAILABLE"]
        assert v in available and max(available) == v, f"{host.name}: AVAILABLE {available}, expected v{v} highest"
        for route in ({"label": "stable"}, {}, {"version": v}):
            assert self.answers_like(host, v, **route), f"{host.name}: {route or 'unversioned'} does not answer " \
                                                        f"v{v}'s outputs (it answers v{self.which(host, **route)})"

    def close(self) -> None:
        self.fleet.close()
