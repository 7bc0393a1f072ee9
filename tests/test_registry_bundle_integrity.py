"""A registered version's bytes are the ones registered: the sha256 of every file under
``tfserving/`` and ``golden/`` is recorded with the ``register`` ledger row, and every download
(deploy, infra-validate, demo) is checked against it. MLflow artifacts can be rewritten after
registration; a deploy must not publish a model the gate never saw, nor blame the version for a
file damaged in the store. Real MLflow server, real deploy to a local server."""
from __future__ import annotations

import json
import os

import pytest

from mlops_common.errors import ConfigError
from registry import bundle_hashes, versions
from registry.client import tracking_client
from tests.fixtures.faults import final_error_line


def test_differences_name_each_changed_missing_and_added_file():
    rec = {"tfserving/saved_model.pb": "a" * 64, "golden/request.json": "b" * 64, "golden/response.json": "c" * 64}
    got = {"tfserving/saved_model.pb": "f" * 64, "golden/request.json": "b" * 64, "golden/extra.json": "d" * 64}
    assert bundle_hashes.differences(rec, got) == [
        "tfserving/saved_model.pb changed", "golden/response.json is missing", "golden/extra.json was added"]
    assert bundle_hashes.differences(rec, dict(rec)) == []
    assert bundle_hashes.digest(rec) == bundle_hashes.digest(dict(reversed(list(rec.items()))))
    assert bundle_hashes.digest(rec) != bundle_hashes.digest(got)


def test_a_version_registered_before_v1_was_recorded_keeps_its_hashes(tmp_path):
    """Two first trainings at once: MLflow gives them v1 and v2, and v2's row may be written
    first. Reading only the rows from v1's registration on (what decisions do for a model created
    again) hid v2's hashes, and every deploy of v2 went unchecked (found by review, 2026-12-04)."""
    import time

    from registry.ledger import Entry, Ledger

    led = Ledger(f"sqlite:///{tmp_path}/ledger.db")
    made = int(time.time() * 1000)        # when MLflow created the model (rows without created_ms)
    led.append(Entry("register", "m", "ok", to_version=2, details={"bundle_files": {"tfserving/a": "2" * 64}}))
    led.append(Entry("register", "m", "ok", to_version=1, details={"bundle_files": {"tfserving/a": "1" * 64}}))
    assert bundle_hashes.recorded("m", 2, led) == {"tfserving/a": "2" * 64}
    assert [e.to_version for e in led.entries("m", current=True, created_ms=made)] == [1]   # what decisions read


def test_two_first_registrations_at_once_keep_v2_s_rows_in_the_current_view(make_version, tmp_path, monkeypatch):
    """The same race through ``register_version`` on a real server: v1 is created and held before
    its row (the ``register:after_version`` pause), v2 registers whole, then v1's row is written.
    The current-model view decisions read started at v1's row and hid v2's registration and any
    gate of v2 recorded before it (found by review, s15-lineage); the view now starts at the
    earliest registration of a version MLflow created after that v1 (the server's creation time
    kept in each ``register`` row)."""
    import threading
    import time

    from mlops_common import faultpoint
    from registry.ledger import CREATED_MS, Entry, Ledger

    model = os.environ["MLOPS_MODEL_NAME"]
    marker = tmp_path / "paused"
    monkeypatch.setattr(faultpoint, "_fired", set())
    monkeypatch.setenv(faultpoint.PAUSE_AT, "register:after_version")
    monkeypatch.setenv(faultpoint.MARKER, str(marker))
    monkeypatch.setenv(faultpoint.SECONDS, "60")
    first: list = []
    held = threading.Thread(target=lambda: first.append(make_version()), daemon=True)
    held.start()
    deadline = time.monotonic() + 60
    while not marker.exists() and held.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "v1's registration never reached its pause"
    v2 = make_version()                  # the pause fires once per process: this one runs through
    led = Ledger()
    led.append(Entry("gate", model, "passed", to_version=v2, details={"accuracy": 0.95}))
    marker.unlink()
    held.join(timeout=60)
    assert not held.is_alive() and first == [1] and v2 == 2
    rows = led.entries(model)
    assert [(e.action, e.to_version) for e in rows] == [("register", 2), ("gate", 2), ("register", 1)]
    assert all(isinstance(e.details.get(CREATED_MS), int) for e in rows if e.action == "register")
    assert [(e.action, e.to_version) for e in led.entries(model, current=True)] == \
        [("register", 2), ("gate", 2), ("register", 1)]


def test_the_current_view_still_leaves_out_a_deleted_model_s_rows(tmp_path):
    """A model deleted and created again: the old incarnation's rows stay out of the current view,
    including a registration written just before the new v1's (its version was created earlier)."""
    from registry.ledger import CREATED_MS, Entry, Ledger

    led = Ledger(f"sqlite:///{tmp_path}/ledger.db")
    for v, ms in ((1, 1000), (2, 2000), (3, 3000)):
        led.append(Entry("register", "m", "ok", to_version=v, details={CREATED_MS: ms}))
    led.append(Entry("promote", "m", "ok", to_version=3))
    led.append(Entry("register", "m", "ok", to_version=2, details={CREATED_MS: 9200}))   # new v2, written first
    led.append(Entry("register", "m", "ok", to_version=1, details={CREATED_MS: 9100}))
    assert [(e.action, e.to_version) for e in led.entries("m", current=True, created_ms=9000)] == \
        [("register", 2), ("register", 1)]


def test_the_current_view_of_a_model_created_again_outside_mlops_leaves_out_the_deleted_models_rows(tmp_path):
    """A model deleted and created again whose v1 was registered outside mlops (no ``register`` row
    of its own): the view started at the deleted v1's ``register`` row, so the deleted model's
    production and failed deploy were the new one's (found by review, twentieth stop). Now a
    registration is the model's only when MLflow created its version after the model (the
    server's clock); its rows start there, or at the first row written after the model was
    created, whichever comes first."""
    import sqlite3
    from datetime import datetime, timedelta, timezone

    from registry.ledger import CREATED_MS, Ledger

    url = f"sqlite:///{tmp_path}/ledger.db"
    led = Ledger(url)
    t0 = datetime(2026, 12, 7, 9, 0, tzinfo=timezone.utc)
    ms = round(t0.timestamp() * 1000)
    db = sqlite3.connect(tmp_path / "ledger.db")
    for s, action, v, outcome, details in (
            (1, "register", 1, "ok", {CREATED_MS: ms + 1000}),          # the deleted model
            (2, "register", 2, "ok", {CREATED_MS: ms + 2000}),
            (3, "promote", 2, "ok", None),
            (4, "deploy", 1, "failed", None),
            (11, "gate", 1, "passed", None),                            # created again at +10 s, v1 outside
            (12, "promote", 1, "ok", None),
            (13, "register", 2, "ok", {CREATED_MS: ms + 13000})):       # v2 through mlops
        db.execute("INSERT INTO ledger_entries (at, action, model, to_version, outcome, details) "
                   "VALUES (?, ?, ?, ?, ?, ?)",
                   ((t0 + timedelta(seconds=s)).strftime("%Y-%m-%d %H:%M:%S.%f"), action, "m", v, outcome,
                    json.dumps(details) if details else None))
    db.commit()
    db.close()

    def view(created: int) -> list:
        return [(e.action, e.to_version) for e in led.entries("m", current=True, created_ms=created)]

    assert view(ms + 10000) == [("gate", 1), ("promote", 1), ("register", 2)]
    assert view(ms + 12500) == [("register", 2)]            # the first row written since: its registration
    assert view(ms + 20000) == []                           # created after every row: none of it is this model's
    assert view(ms) == [("register", 1), ("register", 2), ("promote", 2), ("deploy", 1), ("gate", 1),
                        ("promote", 1), ("register", 2)]    # created before the v1 registered: every row


def test_a_recreated_models_v1_registered_outside_mlops_is_not_checked_against_the_deleted_v1s_hashes(
        make_version, tiny_serving_bundle, tmp_path):
    """A model deleted and created again under the same name, its new v1 registered in the MLflow
    UI or API (no ``register`` row of ours): the deleted v1's row was taken as its record, so a
    deploy (and the gate's signature read) refused its bundle as "changed in the artifact store
    since; restore them". A ``register`` row of the same number created at another time is not
    the version's (found by review, twentieth stop)."""
    import json
    import shutil

    import mlflow

    from registry.gate import _unchecked_models
    from registry.ledger import Ledger
    from registry.rest import rest
    from tests.fixtures.registry_versions import EXPERIMENT

    model = os.environ["MLOPS_MODEL_NAME"]
    assert make_version() == 1 and bundle_hashes.recorded(model, 1)
    rest().call("DELETE", "registered-models/delete", body={"name": model}, what="test")
    bundle = tmp_path / "other"
    shutil.copytree(tiny_serving_bundle, bundle)
    signature = json.loads((bundle / "golden" / "signature.json").read_text())
    (bundle / "golden" / "signature.json").write_text(json.dumps(signature, indent=1))   # other bytes
    exp = tracking_client().get_experiment_by_name(EXPERIMENT)
    with mlflow.start_run(run_name="outside", experiment_id=exp.experiment_id) as run:
        mlflow.log_artifacts(str(bundle / "tfserving"), "tfserving")
        mlflow.log_artifacts(str(bundle / "golden"), "golden")
        logged = mlflow.create_external_model(name="model", source_run_id=run.info.run_id)
    assert int(mlflow.register_model(logged.model_uri, model).version) == 1
    assert bundle_hashes.recorded(model, 1) is None
    try:
        versions.download_bundle(model, 1, tmp_path / "bundle")      # unchecked, with a warning
    except ConfigError as exc:
        pytest.fail(f"the deleted v1's hashes were used: {exc}")
    assert "outside mlops" in _unchecked_models(model, [1], Ledger())[0]


def _relog(run_id: str, tmp_path, artifact_dir: str, name: str, data: bytes) -> None:
    """What anyone with write access to the run can do after registration."""
    local = tmp_path / "relog" / name
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_bytes(data)
    tracking_client().log_artifact(run_id, str(local), artifact_dir)


def test_a_download_of_artifacts_changed_after_registration_is_refused(make_version, tmp_path):
    model = os.environ["MLOPS_MODEL_NAME"]
    v = make_version()
    info = versions.get_version(model, v)
    files = bundle_hashes.recorded(model, v)
    assert files and "tfserving/saved_model.pb" in files and "golden/request.json" in files
    versions.download_bundle(model, v, tmp_path / "ok")            # as registered: fine
    _relog(info.run_id, tmp_path, "golden", "response.json", b'{"predictions": [[1.0]]}\n')
    with pytest.raises(ConfigError) as e:
        versions.download_bundle(model, v, tmp_path / "bad")
    assert e.value.message == (f"the artifacts of version {v} of '{model}' are not the ones registered "
                               f"(golden/response.json changed): they were changed in the artifact store "
                               f"since; restore them or register a new version. Nothing was deployed")
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad.incoming-*"))


def test_a_deploy_of_a_model_swapped_after_registration_touches_no_host(deploy_env, tmp_path):
    env = deploy_env
    host = env.add_host("file")
    v1 = env.release("a")
    env.serves(host, v1)
    config_v1 = env.config_text(host)
    v2 = env.register("b")
    run_id = versions.get_version(env.model, v2).run_id
    pb = env.bundles.path("c") / "tfserving" / "saved_model.pb"        # another model's graph
    _relog(run_id, tmp_path, "tfserving", "saved_model.pb", pb.read_bytes())
    env.promote(v2)
    r = env.cli("sync", "deploy")
    line = final_error_line(r.stderr)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert f"the artifacts of version {v2} of '{env.model}' are not the ones registered " \
           f"(tfserving/saved_model.pb changed)" in line, line
    assert env.config_text(host) == config_v1 and v2 not in env.states(host)
    assert not (host.base / env.model / str(v2)).exists()
    env.serves(host, v1)
    assert env.tags(v2).get("deploy_status") != "failed"              # the version is not to blame


def test_a_switch_back_to_a_version_still_on_the_host_checks_its_golden_set(deploy_env, tmp_path):
    """A rollback to a version the host still holds downloads no SavedModel: the golden set alone
    verifies it, so that golden set must be the one the version was gated with."""
    env = deploy_env
    host = env.add_host("file")
    v1 = env.release("a")
    v2 = env.release("b")
    env.serves(host, v2)
    assert v1 in env.states(host)                                  # kept warm: a switch back is warm
    config_v2 = env.config_text(host)
    run_id = versions.get_version(env.model, v1).run_id
    # v2's golden answers written over v1's: the smoke test would then hold v1 to another model
    _relog(run_id, tmp_path, "golden", "response.json",
           (env.bundles.path("b") / "golden" / "response.json").read_bytes())
    env.promote(v1)
    r = env.cli("sync", "deploy")
    line = final_error_line(r.stderr)
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert f"the artifacts of version {v1} of '{env.model}' are not the ones registered " \
           f"(golden/response.json changed)" in line, line
    assert env.config_text(host) == config_v2
    env.serves(host, v2)
    assert env.tags(v1).get("deploy_status") != "failed"              # the version is not to blame
    # what `mlops sync smoke` reads is checked the same way
    r = env.cli("sync", "smoke", "--version", str(v1))
    assert r.returncode != 0 and "(golden/response.json changed)" in final_error_line(r.stderr), r.stderr


def test_check_files_compares_only_the_files_read_and_names_unregistered_ones(make_version):
    model = os.environ["MLOPS_MODEL_NAME"]
    v = make_version()
    info = versions.get_version(model, v)
    raw = {f"golden/{n}.json": versions.run_artifact_bytes(info.run_id, f"golden/{n}.json")
           for n in versions.GOLDEN_NAMES}
    bundle_hashes.check_files(model, v, raw)                           # as registered: fine
    assert versions.golden_set(model, v)["request"] == versions.run_artifact_json(info.run_id, "golden/request.json")
    with pytest.raises(ConfigError) as e:
        bundle_hashes.check_files(model, v, {**raw, "golden/request.json": raw["golden/request.json"] + b" ",
                                             "golden/notes.json": b"{}"})
    assert "(golden/request.json changed; golden/notes.json was added)" in e.value.message


def test_a_download_hands_its_checked_hashes_to_the_manifest_so_the_model_is_read_once(
        make_version, tmp_path, monkeypatch):
    from serving_sync import manifest as mf

    model = os.environ["MLOPS_MODEL_NAME"]
    v = make_version()
    b = versions.download_bundle(model, v, tmp_path / "b")
    assert b.sha256 and "saved_model.pb" in b.sha256
    reads = []
    real = mf.sha256_file
    monkeypatch.setattr(mf, "sha256_file", lambda p: reads.append(p) or real(p))
    manifest = mf.build(b.saved_model_dir, known=b.sha256)
    assert reads == []                                                 # not read a second time
    monkeypatch.setattr(mf, "_MEMO", {})
    assert mf.build(b.saved_model_dir) == manifest and len(reads) == len(manifest.files)


def test_a_registration_whose_ledger_row_cannot_be_written_leaves_no_version(make_version, monkeypatch):
    """Found by a sweep (2026-12-04): the version was created, then the ledger row failed (a
    database gone, a signal): a version nobody's ledger knew of, whose files no deploy could check.
    Now the version is removed again and the line says so."""
    from mlops_common.errors import UserError
    from registry import register
    from registry.ledger import Ledger as RealLedger

    model = os.environ["MLOPS_MODEL_NAME"]
    v1 = make_version()

    class Refusing(RealLedger):
        def append(self, entry):
            raise UserError("cannot write the ledger database (MLOPS_LEDGER_URL): disk I/O error")

    monkeypatch.setattr(register, "Ledger", Refusing)
    with pytest.raises(UserError) as caught:
        make_version()
    assert str(caught.value) == (f"cannot write the ledger database (MLOPS_LEDGER_URL): disk I/O error; version "
                                 f"{v1 + 1} of '{model}' was removed again: nothing is registered")
    assert [i.version for i in versions.list_versions(model)] == [v1]
    assert [e.to_version for e in RealLedger().entries(model, actions=("register",))] == [v1]


def _run_with_a_logged_model(bundle):
    """A finished run holding ``bundle``'s golden files and a logged model, read through whatever
    ``MLFLOW_TRACKING_URI`` says now (a fault proxy)."""
    import mlflow

    tracking_client()
    exp = mlflow.get_experiment_by_name("registry-fixture-versions").experiment_id
    with mlflow.start_run(experiment_id=exp) as run:
        mlflow.log_artifacts(str(bundle / "golden"), "golden")
        logged = mlflow.create_external_model(name="model", source_run_id=run.info.run_id)
    return run, logged


def _register_a_new_run(model, bundle, **kw):
    """``register_version`` of a model logged in a new run of ``bundle``, as `mlops train` calls it."""
    from registry.register import register_version

    run, logged = _run_with_a_logged_model(bundle)
    return register_version(model, logged.model_uri, run_id=run.info.run_id, tags={"dataset": "digits"},
                            bundle_files=bundle_hashes.tree_files(bundle), **kw)


@pytest.mark.parametrize("method, failing, lost", [("PATCH", "/model-versions/update", False),
                                                   ("PATCH", "/tags", False),
                                                   ("POST", "/model-versions/create", True)],
                         ids=["description", "logged-model-tag", "create-answer-lost"])
def test_a_registration_whose_server_fails_after_creating_the_version_leaves_no_version(
        make_version, http_fault_proxy, mlflow_server, tiny_serving_bundle, monkeypatch, method, failing, lost):
    """Found by a review (2026-12-05, fourth stop): MLflow created the version, then a later request
    of the same registration failed (the description `mlops train` writes, or MLflow's own tag on
    the logged model), or the answer to the creation was lost: the version stayed registered
    without its ledger row and without the hashes of its files, so no deploy could check them.
    Now it is removed again and the line says so."""
    from mlops_common.errors import UserError
    from registry.ledger import Ledger

    model = os.environ["MLOPS_MODEL_NAME"]
    v1 = make_version()
    proxy = http_fault_proxy(mlflow_server, fail_always=True, drop_after_forward=lost,
                             match=lambda m, path: m == method and path.endswith(failing))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", proxy.url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(UserError) as caught:
        _register_a_new_run(model, tiny_serving_bundle, description="trained from scratch on digits")
    assert proxy.failed, "the fault was never injected"
    assert str(caught.value).endswith(f"version {v1 + 1} of '{model}' was removed again: nothing is registered")
    assert [i.version for i in versions.list_versions(model)] == [v1]
    assert [e.to_version for e in Ledger().entries(model, actions=("register",))] == [v1]


def test_a_version_creation_retried_after_its_answer_was_lost_registers_one_version(
        make_version, http_fault_proxy, mlflow_server, tiny_serving_bundle, monkeypatch):
    """Found by a review (2026-12-05, fourth stop): MLflow's client retries a POST whose answer was
    lost (a proxy's 502/504 after the server committed it, a reset connection), and each try
    creates a version: the registration went on with the last one and left the first registered
    without a ledger row or file hashes. Now the versions this call created besides its own are
    removed again."""
    from registry.ledger import Ledger

    model = os.environ["MLOPS_MODEL_NAME"]
    v1 = make_version()
    proxy = http_fault_proxy(mlflow_server, fail_first=1, drop_after_forward=True,
                             match=lambda m, path: m == "POST" and path.endswith("/model-versions/create"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", proxy.url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    v = _register_a_new_run(model, tiny_serving_bundle)
    assert proxy.failed, "the fault was never injected"
    assert [i.version for i in versions.list_versions(model)] == [v, v1]
    assert [e.to_version for e in Ledger().entries(model, actions=("register",))] == [v1, v]


def test_a_retried_creation_whose_registration_then_fails_leaves_neither_copy(
        make_version, http_fault_proxy, mlflow_server, tiny_serving_bundle, monkeypatch):
    """Found by a review (2026-12-06, fifteenth stop): the answer to the version creation lost
    once (MLflow's client retried the POST: two versions of the run), then the description's
    update failed. Only the version the retry returned was removed: the first copy stayed
    registered without a ledger row or file hashes, and the line said "nothing is registered".
    Now every version of the run this call created is removed. Two proxies in a row: the first
    drops the creation's answer, the second refuses the description."""
    from mlops_common.errors import UserError
    from registry.ledger import Ledger

    model = os.environ["MLOPS_MODEL_NAME"]
    v1 = make_version()
    refusing = http_fault_proxy(mlflow_server, fail_always=True,
                                match=lambda m, path: m == "PATCH" and path.endswith("/model-versions/update"))
    dropping = http_fault_proxy(refusing.url, fail_first=1, drop_after_forward=True,
                                match=lambda m, path: m == "POST" and path.endswith("/model-versions/create"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dropping.url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    with pytest.raises(UserError) as caught:
        _register_a_new_run(model, tiny_serving_bundle, description="trained from scratch on digits")
    assert dropping.failed and refusing.failed, "a fault was never injected"
    assert str(caught.value).endswith(f"versions {v1 + 1}, {v1 + 2} of '{model}' were removed again: "
                                      f"nothing is registered")
    assert [i.version for i in versions.list_versions(model)] == [v1]
    assert [e.to_version for e in Ledger().entries(model, actions=("register",))] == [v1]


def _another_command_registers(register_model, model, logged):
    """What a second `mlops registry register --run-id` of the same run does at the same moment:
    a version of that run, created by another call (its own mark, not this call's)."""
    return int(register_model(logged.model_uri, model, tags={"validation_status": "pending",
                                                             "register_call": "0ther0call000"}).version)


@pytest.mark.parametrize("first", ["another command", "this command"])
def test_two_registrations_of_one_run_at_once_leave_the_first_version_and_delete_nothing_of_the_other(
        make_version, tiny_serving_bundle, monkeypatch, first):
    """Found by review (2026-12-07, nineteenth stop): two `registry register --run-id R` at once
    both saw the run unregistered; each then removed, as "a retried request's copy", every
    version of the run it had not returned, the other command's too, which that command had
    already reported ("registered vN") and may have gated. Now each call marks what it creates
    (`register_call`); another call's version is never removed, and the call whose version is the
    later one removes its own and refuses with one line: the run is registered once."""
    import mlflow

    from mlops_common.errors import RefusedError
    from registry.ledger import Ledger
    from registry.register import register_version

    model = os.environ["MLOPS_MODEL_NAME"]
    v1 = make_version()
    run, logged = _run_with_a_logged_model(tiny_serving_bundle)
    real = mlflow.register_model
    other: list[int] = []

    def racing(*args, **kwargs):
        if first == "another command":
            other.append(_another_command_registers(real, model, logged))
        mv = real(*args, **kwargs)
        if first == "this command":
            other.append(_another_command_registers(real, model, logged))
        return mv

    monkeypatch.setattr(mlflow, "register_model", racing)
    register = lambda: register_version(model, logged.model_uri, run_id=run.info.run_id,    # noqa: E731
                                        tags={"dataset": "digits"},
                                        bundle_files=bundle_hashes.tree_files(tiny_serving_bundle))
    if first == "another command":
        with pytest.raises(RefusedError) as caught:
            register()
        assert other == [v1 + 1]
        assert str(caught.value) == (f"run {run.info.run_id} was registered meanwhile as version {v1 + 1} of "
                                     f"'{model}' by another command; version {v1 + 2} of '{model}' was removed "
                                     f"again: nothing is registered")
        assert [i.version for i in versions.list_versions(model)] == [v1 + 1, v1]
        assert [e.to_version for e in Ledger().entries(model, actions=("register",))] == [v1]
    else:
        v = register()
        assert (v, other) == (v1 + 1, [v1 + 2])
        # the other command's version stays: that command, whose version is the later one, refuses
        assert [i.version for i in versions.list_versions(model)] == [v1 + 2, v1 + 1, v1]
        assert [e.to_version for e in Ledger().entries(model, actions=("register",))] == [v1, v1 + 1]
