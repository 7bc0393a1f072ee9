"""Observing a host while TF Serving is still loading its served version (it just restarted): such a
host once looked like a first deploy (serving nothing), so the plan dropped its labels and retention
could delete the version about to serve. The observation now waits, bounded, until it has settled."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from serving_sync import host_config
from serving_sync import models_config as mc
from serving_sync.errors import ServingTimeout
from serving_sync.fleet_plan import observe_and_plan
from serving_sync.hosts import Host, Target
from serving_sync.observe import observe_settled
from serving_sync.options import DeployOptions
from serving_sync.plan import AVAILABLE, HostObservation
from serving_sync.tfs_client import TFServingClient, VersionStatus
from serving_sync.transports.local import LocalTransport

M = "digits"


class ScriptedServing(TFServingClient):
    """TF Serving that reports ``loading_polls`` status answers with v5 LOADING, then v5 AVAILABLE
    (None: it never finishes); the real bounded ``wait_until``, no network."""

    def __init__(self, loading_polls: int | None):
        super().__init__("http://127.0.0.1:1")
        self.loading_polls = loading_polls
        self.status_calls = 0

    def _loading(self) -> bool:
        return self.loading_polls is None or self.status_calls <= self.loading_polls

    def model_status(self, model: str) -> list[VersionStatus]:
        if model != M:
            return []
        self.status_calls += 1
        return [VersionStatus(4, "END"), VersionStatus(5, "LOADING" if self._loading() else AVAILABLE)]

    def label_version(self, model: str, label: str) -> int | None:
        return None if self._loading() else 5       # a label resolves once its version is available


@pytest.fixture
def host(tmp_path):
    base = tmp_path / "serving"
    return Host("h1", Target("file", str(base)), "http://127.0.0.1:1")


@pytest.fixture
def transport(host):
    t = LocalTransport(host.target.path)
    entry = mc.ModelEntry(M, mc.model_base_path(host.serving_base_path(), M), versions=(5,),
                          labels=(("stable", 5),))
    host_config.write(t, mc.ServingConfig((entry,)))
    yield t
    t.close()


def test_a_version_still_loading_is_listed_as_loading_and_not_served():
    obs = HostObservation(host="h1", model=M, base_path="/srv/digits", main_states={5: "LOADING", 4: "END"})
    assert obs.loading == [5] and obs.serving is None
    assert HostObservation(host="h1", model=M, base_path="/srv/digits", main_policy="latest",
                           main_states={5: "START"}).loading == [5]
    done = HostObservation(host="h1", model=M, base_path="/srv/digits", main_states={5: AVAILABLE})
    assert done.loading == [] and done.serving == 5


def test_a_start_version_the_config_no_longer_lists_is_not_loading():
    """TF Serving leaves a version dropped before its load started at START for good."""
    obs = HostObservation(host="h1", model=M, base_path="/srv/digits", main_policy="specific",
                          main_versions=(5,), main_states={4: "START", 5: "START", 6: "LOADING"})
    assert obs.loading == [5, 6]
    # no main entry at all: a first deploy put back before its version started loading (TF Serving
    # then lists it at START for good); every later deploy waited for it and timed out
    gone = HostObservation(host="h1", model=M, base_path="/srv/digits", main_states={1: "START"})
    assert gone.main_policy is None and gone.loading == []


def test_a_host_seen_while_loading_is_observed_again_once_it_serves(host, transport):
    client = ScriptedServing(loading_polls=2)
    observed = observe_settled(host, transport, client, M, timeout=10.0, interval=0.05)
    assert observed.obs.serving == 5 and observed.obs.stable == 5 and observed.obs.loading == []
    assert observed.obs.main_labels == (("stable", 5),)
    assert client.status_calls >= 3


def test_a_host_that_never_finishes_loading_ends_the_observation_with_a_timeout(host, transport):
    client = ScriptedServing(loading_polls=None)
    start = time.monotonic()
    with pytest.raises(ServingTimeout, match="v5 LOADING"):
        observe_settled(host, transport, client, M, timeout=0.5, interval=0.05)
    assert time.monotonic() - start < 5.0


def test_the_fleet_plan_keeps_the_version_a_loading_host_is_about_to_serve(host, transport):
    class Conn:
        pass

    conn = Conn()
    conn.host, conn.transport, conn.client = host, transport, ScriptedServing(loading_polls=2)
    (Path(host.target.path) / M / "5").mkdir(parents=True)     # v5 is in our folder: a warm copy can stay
    (observed,), (plan,) = observe_and_plan([conn], M, 6, DeployOptions(timeout=10.0, poll_interval=0.05))
    assert observed.obs.serving == 5
    assert plan.current == 5 and plan.previous_kept == 5
    assert plan.final.versions == (5, 6)              # kept loaded for an instant rollback, not dropped
