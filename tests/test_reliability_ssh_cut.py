"""The SSH connection of a deploy cut at many byte offsets (loopback proxy), then run again.

A real OpenSSH sshd; between it and the deploy, a loopback TCP proxy that forwards the first
connection's client -> server bytes up to an offset and then resets both sides (RST). The
offsets are spread over the whole deploy: inside the SSH handshake and authentication, the lock
and the observation, the upload of a 3 MB SavedModel, and the verification, rename and
``models.config`` writes after it (placed as fractions of the bytes a whole deploy of the same
model sends, measured through a counting proxy first). Every trial checks: one clear line, no
request of the traffic loop failed, TF Serving can see only complete verified versions, the
host is exactly as before (or, for a cut after the switch, on the new version), and the next run
through the same address (no longer cut) converges to the new version.
"""
from __future__ import annotations

import pytest

from mlops_common.errors import UserError
from tests.fixtures.faults import numeric, tree_bytes

pytestmark = pytest.mark.slow

# where the first connection dies: bytes from the start (SSH handshake, authentication, lock and
# observation), fractions of a whole deploy (the upload), and bytes before the end of a whole
# deploy (verification, rename, the models.config writes, the switch, the lock release)
FROM_START = (200, 1_500)
FRACTIONS = (0.05, 0.5, 0.95)
BEFORE_END = (9_000, 6_000, 4_000, 2_500, 1_200)


def serves_big(env, host, v: int) -> None:
    """``host`` serves ``v`` on every route. Every version here is the same "big" model (equal
    outputs), so which version answers is read from TF Serving (label, states), and the outputs
    are checked to be the big model's golden outputs."""
    from tests.lab.traffic import identify

    golden = {v: env.bundles.golden("big")["response"]["predictions"]}
    available = [x for x, s in env.states(host).items() if s == "AVAILABLE"]
    assert env.label(host) == v and max(available) == v, (env.label(host), env.states(host))
    for route in ({}, {"label": "stable"}, {"version": v}):
        r = env.predict(host, **route)
        assert r.status_code == 200 and identify(r.json()["predictions"], golden) == v, (route, r.text[:200])


def through(env, host, port: int, tmp_path) -> None:
    """Point ``host`` at the sshd through a proxy listening on ``port`` (known_hosts pinned)."""
    sshd = env._sshd()
    key_type, key_b64 = sshd.host_key_pub.split()[:2]
    known = tmp_path / f"known_hosts_{port}"
    known.write_text(f"[127.0.0.1]:{port} {key_type} {key_b64}\n")
    host.entry.update(target=f"ssh://{sshd.user}@127.0.0.1:{port}{host.base}", known_hosts=str(known))
    env.write_hosts_file()


def test_ssh_cut_at_many_offsets_never_breaks_serving_and_the_next_run_converges(
        deploy_env, sshd_factory, cut_proxy, tmp_path):
    env = deploy_env
    host = env.add_host("ssh")
    big = tree_bytes(env.bundles.path("big") / "tfserving")
    counter = cut_proxy(env._sshd().port, None)      # never cuts: counts the bytes
    through(env, host, counter.port, tmp_path)
    first = env.register("big")
    env.promote(first)
    assert env.deploy().status == "deployed"
    whole = counter.sent[0]                       # bytes one whole deploy sends on its connection
    assert whole > 3_000_000, counter.sent
    offsets = list(FROM_START) + [int(f * whole) for f in FRACTIONS] + [whole - b for b in BEFORE_END]

    traffic = env.traffic(host)
    outcomes = []
    try:
        serving = first
        for offset in offsets:
            v = env.register("big")
            env.promote(v)
            config_before = env.config_text(host)
            proxy = cut_proxy(env._sshd().port, offset)
            through(env, host, proxy.port, tmp_path)
            try:
                r = env.deploy()
            except UserError as exc:
                msg = exc.message
                assert "\n" not in msg and msg, msg
                outcomes.append((offset, type(exc).__name__, msg))
                # a failed deploy left the host as it was (put back if it had changed it)
                assert env.label(host) == serving, f"offset {offset}: stable moved ({msg})"
                assert env.config_text(host) == config_before, msg
                assert env.production() == v, f"offset {offset}: production moved back ({msg})"
                assert env.tags(v).get("deploy_status") != "failed", msg     # not the version's fault
            else:   # cut after the work was done (retention, lock release): it reconnected
                outcomes.append((offset, "succeeded", r.message))
                assert env.label(host) == v
            assert proxy.cuts == 1, f"offset {offset}: the connection was not cut"
            # what TF Serving can see: only complete, verified versions
            model_dir = host.base / env.model
            for n in numeric(model_dir):
                assert tree_bytes(model_dir / str(n)) == big, f"offset {offset}: v{n} is not complete"
            assert not (host.base / ".serving_sync" / "lock").exists()
            # the next run, through the same address (the proxy cuts only once), converges
            r = env.deploy()
            assert r.status in ("deployed", "up_to_date"), r.message
            serves_big(env, host, v)
            assert env.production() == v and env.tags(v).get("deploy_status") == "deployed"
            assert not (host.base / ".serving_sync" / "lock").exists()
            serving = v
    finally:
        traffic.stop()
        print("\n".join(f"cut after {o:>9} bytes: {kind}: {m}" for o, kind, m in outcomes))
    assert traffic.failures == [], traffic.failures[:5]
    assert None not in set(traffic.answers["unversioned"]) | set(traffic.answers["stable"])
    assert len(outcomes) == len(offsets) >= 10
    kinds = {kind for _, kind, _ in outcomes}
    assert {"HostUnreachable", "DeployFailed"} <= kinds, outcomes
    steps = {m.split("at step '")[1].split("'")[0] for _, _, m in outcomes if "at step '" in m}
    assert "publish" in steps and steps - {"publish"}, steps      # cuts during and after the upload
