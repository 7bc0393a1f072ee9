"""What a successful deploy removes from its hosts and its shared store (found by review):

- a ``--version`` deploy protected its own predecessor, not where ``mlops registry rollback``
  goes (production's), and removed that from the hosts;
- when the rollback target could not be read after the switch, retention removed without it;
- the store removed a version a host keeps as its previous one (``--no-keep-previous``, or a
  switch down to a lower version), so the next rollback uploaded it again.

Real ``retention`` on local directories; the registry side is a stand-in recorder (its rule is
``registry.deploys.DeployLedger.rollback_target``, tested against a real MLflow in
``test_registry_previous_production.py``).
"""
from __future__ import annotations

from types import SimpleNamespace as NS

import pytest

from mlops_common.errors import UserError
from serving_sync import deploy_retention, fleet
from serving_sync.options import DeployOptions
from serving_sync.transports.local import LocalTransport

M = "digits"


def _host(root, versions) -> LocalTransport:
    for v in versions:
        d = root / M / str(v)
        d.mkdir(parents=True)
        (d / "saved_model.pb").write_bytes(b"pb")
    return LocalTransport(root)


def _on(root) -> list[int]:
    return sorted(int(p.name) for p in (root / M).iterdir() if p.name.isdigit())


def _run(t, *, desired, current, previous_kept, final, store=None):
    return NS(plan=NS(model=M, desired=desired, current=current, previous_kept=previous_kept,
                      final=NS(versions=final), held_by_others=()),
              transport=t, host=NS(name="h1", store=store,
                                   target=NS(scheme="ssh", host="h1", port=22, path="/srv/models")),
              heartbeat=lambda force=False: None,
              conn=NS(lock=None),
              outcome=NS(retention=None, host="h1", from_version=current, previous_kept=previous_kept))


class _Recorder:
    def __init__(self, target=None, error=None, own=None):
        self.target, self.error, self.own = target, error, own

    def previous_production(self, version):     # the deployed version's own predecessor
        if self.error:
            raise UserError(self.error)
        return self.own

    def rollback_target(self):
        if self.error:
            raise UserError(self.error)
        return self.target


@pytest.fixture
def untagged(monkeypatch):
    monkeypatch.setattr(fleet.deploys, "tag", lambda *a, **k: None)
    monkeypatch.setattr(fleet.deploys, "restoring", lambda *a, **k: None)      # not after a rollback


def _result(version, stores=()):
    return NS(model=M, version=version, bake=[], rollout={}, stores=list(stores), status="failed", message="",
              restore=None)


def test_a_version_deploy_keeps_where_the_registry_would_roll_back_to(tmp_path, untagged):
    # production history 3 -> 4 -> 5; hosts serve 5; `mlops sync deploy --version 6 --keep 1`:
    # `mlops registry rollback` would go to 4 (production's predecessor), not 5 (6's)
    t = _host(tmp_path, [3, 4, 5, 6])
    run = _run(t, desired=6, current=5, previous_kept=5, final=(5, 6))
    fleet._succeeded(_result(6), _Recorder(target=4, own=5), [run], DeployOptions(keep=1))
    assert _on(tmp_path) == [4, 5, 6]


def test_an_unreadable_rollback_target_removes_nothing(tmp_path, untagged):
    t = _host(tmp_path, [3, 4, 5, 6])
    run = _run(t, desired=6, current=5, previous_kept=5, final=(5, 6))
    result = _result(6, stores=[{"store": "s3://b/p"}])
    fleet._succeeded(result, _Recorder(error="MLflow answered 503"), [run], DeployOptions(keep=1))
    assert _on(tmp_path) == [3, 4, 5, 6]
    assert run.outcome.retention == {"skipped": "MLflow answered 503"}
    assert result.stores[0]["retention"] == {"skipped": "MLflow answered 503"}
    assert result.status == "deployed"


def test_the_store_keeps_what_the_hosts_keep_when_the_old_version_is_not_kept_warm(tmp_path, monkeypatch):
    """Production rolled back 5 -> 4: the hosts switch down to 4 (5 is not kept loaded) but keep
    5's files as their previous version; the store removed 5."""
    import serving_sync.transports.s3 as s3mod

    host_dir, store_dir = tmp_path / "host", tmp_path / "store"
    host, store_t = _host(host_dir, [3, 4, 5, 6]), _host(store_dir, [3, 4, 5, 6])
    monkeypatch.setattr(s3mod, "S3Transport", lambda bucket, path, **kw: store_t)   # the bucket, on disk
    store = NS(url="s3://bucket/p", target=NS(scheme="s3", bucket="bucket", path="p"))
    run = _run(host, desired=4, current=5, previous_kept=None, final=(4,), store=store)
    opts = DeployOptions(keep=1)
    deploy_retention.host_retention(run, opts, 3)
    deploy_retention.store_retention(NS(model=M, version=4, source="production", stores=[{"store": store.url}]),
                                     [run], opts, 3)
    assert _on(host_dir) == [3, 4, 5, 6]         # rollback target, serving, previous, newest
    assert _on(store_dir) == _on(host_dir)       # the store removed 5


def test_file_host_retention_removes_a_symlinked_version_and_a_stray_upload_file(tmp_path):
    """Found by review (2026-12-05, third stop): on a file:// host ``shutil.rmtree`` refused a
    version folder that is a symbolic link ("Cannot call rmtree on a symbolic link") and an
    ``.incoming-*`` that is a file ("Not a directory"); retention stopped at the first and, on
    every later deploy, removed no old version at all (ssh hosts remove both: ``rm -rf``, and
    over SFTP the link, never what it points at)."""
    from serving_sync import retention

    outside = tmp_path / "precious"
    (outside / "sub").mkdir(parents=True)
    (outside / "data.bin").write_bytes(b"x" * 10)
    t = _host(tmp_path / "srv", (2, 3, 4, 5))
    (tmp_path / "srv" / M / "1").symlink_to(outside, target_is_directory=True)
    (tmp_path / "srv" / M / ".incoming-9-stray").write_text("a file, not an upload folder")
    rp = retention.plan(t, M, serving=5, previous=4, keep=3)
    assert rp.remove_versions == [1, 2] and rp.remove_uploads == [".incoming-9-stray"]
    retention.apply(t, rp)
    assert sorted(p.name for p in (tmp_path / "srv" / M).iterdir()) == ["3", "4", "5"]
    assert sorted(str(p.relative_to(outside)) for p in outside.rglob("*")) == ["data.bin", "sub"]


@pytest.mark.parametrize("kind", ["file", "ssh"])
def test_a_removal_killed_midway_never_leaves_part_of_a_numeric_version(kind, request, tmp_path):
    """Found by review (2026-12-05, fourth stop): retention removed an old version with ``rm -rf``
    (``shutil.rmtree``) on its numeric folder. A deploy killed during it (SIGKILL, a lost
    connection) left ``<model>/<v>/`` with part of its files: a published version to every later
    reader, and a deploy of it (a rollback to it) refused as a damaged leftover until a person
    removed it. The folder is first renamed out of sight (one atomic rename, as publish renames a
    version in), so the leftover of a killed removal is a dead upload the next retention removes."""
    from serving_sync import manifest as mf
    from serving_sync import retention
    from serving_sync.publish import incoming_dirs, publish, published_versions
    from tests.test_sync_support import make_hut, make_model_tree

    d = make_model_tree(tmp_path / "model", variables_bytes=1000)
    m = mf.build(d)
    h = make_hut(kind, request, tmp_path)
    t = h.transport
    real_remove_tree = t.remove_tree

    class Killed(BaseException):
        pass

    def killed_midway(rel):      # rm -rf got as far as variables/, then the process died
        real_remove_tree(f"{rel}/variables")
        raise Killed()

    try:
        for v in (1, 2, 3):
            publish(t, M, v, d, m)
        rp = retention.plan(t, M, serving=3, previous=2, keep=0)
        assert rp.remove_versions == [1]
        t.remove_tree = killed_midway
        with pytest.raises(Killed):
            retention.apply(t, rp)
        t.remove_tree = real_remove_tree
        assert published_versions(t, M) == [2, 3]               # no half-removed v1
        assert publish(t, M, 1, d, m).status == "uploaded"      # v1 can be deployed again
        leftovers = incoming_dirs(t, M)
        assert len(leftovers) == 1
        rp = retention.plan(t, M, serving=3, previous=2, keep=3)
        assert rp.remove_uploads == leftovers and rp.remove_versions == []
        retention.apply(t, rp)
        assert incoming_dirs(t, M) == [] and published_versions(t, M) == [1, 2, 3]
    finally:
        t.close()
