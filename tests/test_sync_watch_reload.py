"""``mlops sync watch``, as the fifteenth stop's review found it (each test fails on the code before):

- the hosts file was read once, when the watch started: a host added to hosts.toml was never
  deployed by a running watch, and a removed one made every pass an error until a restart. Now it
  is read again at the start of a pass when it changed; a change is one log line, a file that does
  not load keeps the hosts read before and says so once;
- ``--break-lock TOKEN`` was documented as used on the first pass only, but it was carried to the
  first pass that reached a deploy (days later, maybe): now the first pass spends it, whatever it
  did.

Real hosts files and ``load_hosts``; the registry and the deploy on stand-ins (the real watch's
lock takeover on a first pass: ``tests/test_sync_lock.py``,
``test_sync_watch_uses_a_named_token_on_its_first_pass_only``).
"""
from __future__ import annotations

import logging
import subprocess
import sys
from types import SimpleNamespace

from serving_sync import fleet, fleet_plan
from serving_sync.watch import FleetReconciler
from tests.helpers import REPO


def _host(name: str, port: int) -> str:
    return (f'[[hosts]]\nname = "{name}"\ntarget = "file:///srv/{name}"\n'
            f'rest_url = "http://127.0.0.1:{port}"\n')


def _reconciler(monkeypatch, planned: list, **kw) -> FleetReconciler:
    def plan(model, hosts, **_):
        planned.append([h.name for h in hosts])
        return SimpleNamespace(errors={}, up_to_date=True, version=3)

    monkeypatch.setattr(fleet_plan, "plan_fleet", plan)
    return FleetReconciler("digits", [], None, recorded=lambda v: False, status_known=lambda v: True,
                           rollback_unrecorded=lambda v: None, **kw)


def test_a_watch_reads_a_changed_hosts_file_at_its_next_pass_and_keeps_the_last_good_one(
        tmp_path, monkeypatch, caplog):
    from mlops.commands import sync as sync_cmd
    from serving_sync.hosts import hosts_file_path, load_hosts
    from serving_sync.watch import WatchedHosts

    path = tmp_path / "hosts.toml"
    path.write_text(_host("a", 8501))
    monkeypatch.delenv("MLOPS_SYNC_TARGET", raising=False)
    args = SimpleNamespace(hosts=str(path))
    assert hosts_file_path(args.hosts) == path
    hosts = load_hosts(str(path))
    planned: list = []
    r = _reconciler(monkeypatch, planned, read_hosts=WatchedHosts(hosts, path, lambda: sync_cmd._hosts(args)))
    r.hosts = hosts
    caplog.set_level(logging.INFO, logger="mlops.sync.watch")

    r()
    assert planned[-1] == ["a"] and not caplog.records          # unchanged: nothing said
    path.write_text(_host("a", 8501) + _host("b", 8502))         # a host added
    r()
    assert planned[-1] == ["a", "b"]
    said = [x.getMessage() for x in caplog.records]
    assert len(said) == 1 and "added b" in said[0] and "2 hosts" in said[0], said
    caplog.clear()

    path.write_text(_host("b", 8502))                            # a host removed
    r()
    assert planned[-1] == ["b"]
    said = [x.getMessage() for x in caplog.records]
    assert len(said) == 1 and "removed a" in said[0], said
    caplog.clear()

    path.write_text(_host("b", 8502) + '[[hosts]]\nname = "c"\n')   # half-written: no target
    for _ in range(3):
        r()
        assert planned[-1] == ["b"]                              # the last good hosts
    bad = [x for x in caplog.records if x.levelno == logging.ERROR]
    assert len(bad) == 1 and len(caplog.records) == 1, [x.getMessage() for x in caplog.records]
    assert str(path) in bad[0].getMessage() and "keeps its 1 host (b)" in bad[0].getMessage()
    caplog.clear()

    path.unlink()                                                # deleted: another refusal, said once
    r()
    r()
    assert planned[-1] == ["b"] and len(caplog.records) == 1 and "does not exist" in caplog.records[0].getMessage()
    caplog.clear()

    path.write_text(_host("b", 8502) + _host("c", 8503))         # fixed
    r()
    assert planned[-1] == ["b", "c"]
    assert [x.getMessage() for x in caplog.records if "added c" in x.getMessage()], caplog.records


def test_the_watch_command_reloads_the_hosts_file(tmp_path):
    """``cmd_watch`` wires the reload in (not only the class): a host added before the second pass
    is in it. One subprocess with the registry and the deploy on stand-ins."""
    path = tmp_path / "hosts.toml"
    path.write_text(_host("a", 8501))
    code = f"""
import sys, pathlib
from types import SimpleNamespace
from serving_sync import fleet_plan
from mlops import cli
seen = []
def plan(model, hosts, **kw):
    seen.append([h.name for h in hosts])
    if len(seen) == 1:
        pathlib.Path({str(path)!r}).write_text({_host("a", 8501) + _host("b", 8502)!r})
    return SimpleNamespace(errors={{}}, up_to_date=True, version=3)
fleet_plan.plan_fleet = plan
import serving_sync.watch as w
w.FleetReconciler._unrecorded = lambda self, v: None
rc = cli.main(["sync", "watch", "--model-name", "digits", "--hosts", {str(path)!r}, "--interval", "0.5",
               "--max-seconds", "1.2", "--json"])
print(seen, file=sys.stderr)
sys.exit(rc)
"""
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "['a'], ['a', 'b']" in p.stderr, p.stderr
    assert "added b" in p.stderr, p.stderr


def test_break_lock_is_spent_by_the_first_pass_even_when_it_deployed_nothing(monkeypatch):
    states = iter([True, False])        # the first pass finds the hosts up to date, the second deploys
    calls = []
    monkeypatch.setattr(fleet_plan, "plan_fleet",
                        lambda model, hosts, **kw: SimpleNamespace(errors={}, up_to_date=next(states), version=4))

    def deploy(model, hosts, **kw):
        calls.append(kw["break_lock"])
        return SimpleNamespace(status="deployed", version=4, message="deployed v4")

    monkeypatch.setattr(fleet, "deploy", deploy)
    r = FleetReconciler("digits", [], None, break_lock="5eed5eed5eed5eed", recorded=lambda v: False,
                        status_known=lambda v: True, rollback_unrecorded=lambda v: None)
    assert r()[0] == "up_to_date"
    assert r()[0] == "deployed"
    assert calls == [None]              # not the token: the pass that could use it was the first
