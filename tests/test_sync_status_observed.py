"""``sync status`` against what TF Serving really holds, not only what models.config says: a config
written but not applied (a deploy killed between its file write and the gRPC reload, a reload the
network lost, TF Serving without a config-file poll) left versions loaded that the file no longer asks
for, and the host read "in sync" (found by review, 2026-12-06, fifteenth stop)."""
from __future__ import annotations

import pytest

from serving_sync import host_config, status
from serving_sync import models_config as mc
from serving_sync.hosts import Host, Target
from serving_sync.observe import observe_host
from serving_sync.tfs_client import TFServingClient, VersionStatus
from serving_sync.transports.local import LocalTransport

M = "digits"


class Served(TFServingClient):
    """TF Serving answering from ``states`` (model -> [VersionStatus]); no network."""

    def __init__(self, states: dict[str, list[VersionStatus]], stable: int):
        super().__init__("http://127.0.0.1:1")
        self.states, self.stable = states, stable

    def model_status(self, model: str) -> list[VersionStatus]:
        return list(self.states.get(model, []))

    def label_version(self, model: str, label: str) -> int | None:
        return self.stable


@pytest.fixture
def host(tmp_path):
    return Host("h1", Target("file", str(tmp_path / "serving")), "http://127.0.0.1:1")


@pytest.fixture
def transport(host):
    t = LocalTransport(host.target.path)
    base = mc.model_base_path(host.serving_base_path(), M)
    host_config.write(t, mc.ServingConfig((mc.ModelEntry(M, base, versions=(5,), labels=(("stable", 5),)),)))
    yield t
    t.close()


def _drift(host, transport, client) -> list[str]:
    """The host's drift from production v5, less "v5 is not published" (no folders in this test)."""
    obs = observe_host(host, transport, client, M).obs
    return [r for r in status.drift(obs, 5) if "not published" not in r]


def _two_file_hosts_listing_v5(tmp_path, rest_url):
    """Hosts h1 and h2 on file:// folders whose models.config lists version 5 (labelled stable) and
    holds its folder; ``rest_url(i)`` is host i's TF Serving."""
    hosts = [Host(f"h{i}", Target("file", str(tmp_path / f"serving{i}")), rest_url(i)) for i in (1, 2)]
    for h in hosts:
        t = LocalTransport(h.target.path)
        base = mc.model_base_path(h.serving_base_path(), M)
        host_config.write(t, mc.ServingConfig((mc.ModelEntry(M, base, versions=(5,), labels=(("stable", 5),)),)))
        (t.base / M / "5").mkdir(parents=True)
        t.close()
    return hosts


def test_a_validation_copy_tf_serving_still_holds_without_an_entry_in_the_file_is_drift(host, transport):
    client = Served({M: [VersionStatus(5, "AVAILABLE")],
                     mc.validation_name(M): [VersionStatus(6, "AVAILABLE"), VersionStatus(3, "END")]}, 5)
    reasons = _drift(host, transport, client)
    assert reasons == [f"TF Serving still serves {M}__validate v6, which models.config does not ask for "
                       f"(TF Serving has not applied the file)"], reasons
    # unloaded long ago (END stays in TF Serving's status for good): nothing to say
    client.states[mc.validation_name(M)] = [VersionStatus(6, "END")]
    assert _drift(host, transport, client) == []


def test_a_version_tf_serving_still_serves_that_the_specific_entry_no_longer_lists_is_drift(host, transport):
    client = Served({M: [VersionStatus(4, "AVAILABLE"), VersionStatus(5, "AVAILABLE"),
                         VersionStatus(3, "START")]}, 5)          # START: dropped before it loaded, for good
    reasons = _drift(host, transport, client)
    assert reasons == [f"TF Serving still serves v4 of {M}, which models.config does not list (TF Serving has "
                       f"not applied the file)"], reasons
    client.states[M] = [VersionStatus(4, "UNLOADING"), VersionStatus(5, "AVAILABLE")]    # on its way out
    assert _drift(host, transport, client) == []


def test_a_host_whose_model_folder_cannot_be_listed_is_reported_and_the_others_still_shown(tmp_path, monkeypatch):
    """A ``file://`` target whose model folder the deploy user cannot list (an NFS mount with
    root_squash, a folder made by hand as another user) raised a bare PermissionError out of
    ``LocalTransport.list_dir``: ``sync status`` ended in a traceback, every other host unshown."""
    import os

    import registry.versions
    from serving_sync import connections
    from serving_sync.transports import local

    hosts = _two_file_hosts_listing_v5(tmp_path, lambda i: "http://127.0.0.1:1")
    real = os.listdir

    def listdir(path):
        if str(path) == str(tmp_path / "serving1" / M):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(local.os, "listdir", listdir)
    monkeypatch.setattr(connections, "TFServingClient",
                        lambda url: Served({M: [VersionStatus(5, "AVAILABLE")]}, 5))
    monkeypatch.setattr(registry.versions, "production_version", lambda model: 5)
    fs = status.fleet_status(M, hosts)
    h1, h2 = fs.hosts
    assert not h1.reachable and "Permission denied" in h1.error and f"listing {M}" in h1.error, h1.error
    assert h2.reachable and h2.in_sync, h2.drift
    assert not fs.in_sync


class Answering(TFServingClient):
    """A REST edge answering every GET with ``answers[path]`` (HTTP 200); no network."""

    def __init__(self, answers: dict[str, dict]):
        super().__init__("http://127.0.0.1:1")
        self.answers = answers

    def _request(self, method, url, body=None, timeout=None):
        path = url[len(self.base):]
        return (200, self.answers[path]) if path in self.answers else (404, {"error": "Servable not found"})


@pytest.mark.parametrize("answers", [
    {f"/v1/models/{M}": {"model_version_status": [{"version": "latest", "state": "AVAILABLE"}]}},
    {f"/v1/models/{M}": {"model_version_status": ["5 AVAILABLE"]}},
    {f"/v1/models/{M}": {"model_version_status": [{"version": "5", "state": "AVAILABLE"}]},
     f"/v1/models/{M}/labels/stable/metadata": {"model_spec": {"version": "latest"}}},
    {f"/v1/models/{M}": {"model_version_status": [{"version": "5", "state": "AVAILABLE"}]},
     f"/v1/models/{M}/labels/stable/metadata": {"model_spec": "digits:5"}},
], ids=["version-not-a-number", "status-not-an-object", "label-version-not-a-number", "model-spec-a-string"])
def test_json_that_is_not_tf_servings_is_the_hosts_one_line_in_sync_status(tmp_path, monkeypatch, answers):
    """A rest_url answering 200 with TF Serving's field names but other types raised ValueError or
    AttributeError out of the status parsing: ``sync status`` (and a deploy's observe) ended in a
    traceback with no host shown. It is NotTFServing naming the host's address: that host CANNOT
    OBSERVE, the others shown."""
    import registry.versions
    from serving_sync import connections

    hosts = _two_file_hosts_listing_v5(tmp_path, lambda i: f"http://127.0.0.1:{i}")
    good = {f"/v1/models/{M}": {"model_version_status": [{"version": "5", "state": "AVAILABLE"}]},
            f"/v1/models/{M}/labels/stable/metadata": {"model_spec": {"version": "5"}}}
    monkeypatch.setattr(connections, "TFServingClient",
                        lambda url: Answering(answers if url.endswith(":1") else good))
    monkeypatch.setattr(registry.versions, "production_version", lambda model: 5)
    fs = status.fleet_status(M, hosts)
    h1, h2 = fs.hosts
    assert not h1.reachable and "http://127.0.0.1:1" in h1.error and "rest_url" in h1.error, h1.error
    assert h2.reachable and h2.in_sync, h2.drift


def test_sync_status_json_carries_tf_servings_reason_for_a_failed_load(tmp_path, monkeypatch):
    """``--json`` gave a failed load as ``"versions": {"6": "END"}``, like a version unloaded on
    purpose: TF Serving's reason was only inside a drift sentence, for a script to parse out of
    prose. Each host now has ``errors`` (version -> TF Serving's error message)."""
    import registry.versions
    from serving_sync import connections

    h = Host("h1", Target("file", str(tmp_path / "serving")), "http://127.0.0.1:1")
    t = LocalTransport(h.target.path)
    base = mc.model_base_path(h.serving_base_path(), M)
    host_config.write(t, mc.ServingConfig((mc.ModelEntry(M, base, versions=(5, 6), labels=(("stable", 5),)),)))
    t.close()
    client = Served({M: [VersionStatus(4, "END"), VersionStatus(5, "AVAILABLE"),
                         VersionStatus(6, "END", "NOT_FOUND", "Could not find SavedModel .pb or .pbtxt")]}, 5)
    monkeypatch.setattr(connections, "TFServingClient", lambda url: client)
    monkeypatch.setattr(registry.versions, "production_version", lambda model: 5)
    (doc,) = status.fleet_status(M, [h]).to_dict()["hosts"]
    assert doc["versions"] == {"4": "END", "5": "AVAILABLE", "6": "END"}
    assert doc["errors"] == {"6": "Could not find SavedModel .pb or .pbtxt"}, doc
