"""The benchmarks (``benchmarks/``, run by hand or ``make bench``) cannot silently rot: each
module is imported and run in its smallest form against the real services, and its table / JSON
functions are checked on what that produced. Nothing here is timed: no assertion on a duration.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from benchmarks import (
    _setup,
    _traffic,
    bench_availability,
    bench_e2e,
    bench_grpc,
    bench_publish,
    bench_rest_cpu,
    bench_rollback,
    bench_warmup,
    run_all,
)


def test_setup_machine_table_results_and_quiet_wait(tmp_path):
    m = _setup.machine()
    assert m["cores"] >= 1 and m["python"].count(".") == 2 and len(m["load_average"]) == 3
    assert m["cpu"] and m["kernel"].startswith(("Linux", "Darwin"))
    line = _setup.machine_line(m)
    assert "cores" in line and "load average" in line
    text = _setup.table(["name", "value"], [["a", 1.5], ["longer name", 22]])
    lines = text.splitlines()
    assert lines[0].startswith("name") and set(lines[1]) <= {"-", " "}
    assert lines[2].endswith(" 1.5") and lines[3].endswith("  22")
    path = _setup.save("unit", {"x": 1}, tmp_path)
    doc = json.loads(path.read_text())
    assert doc["benchmark"] == "unit" and doc["x"] == 1 and doc["machine"]["cores"] == m["cores"]
    assert [p.name for p in tmp_path.iterdir()] == ["unit.json"]          # no temporary file left
    # already quiet: returns at once; never quiet with no time to wait: says so, does not sleep
    assert _setup.wait_for_quiet(threshold=1e9, max_wait=0)["quiet"] is True
    noisy = _setup.wait_for_quiet(threshold=-1, max_wait=0, log=lambda s: None)
    assert noisy["quiet"] is False and noisy["waited_seconds"] < 5
    assert _setup.percentile([3, 1, 2, 4], 50) == 2 and _setup.percentile([], 50) is None


def test_a_quick_run_does_not_overwrite_the_recorded_results(tmp_path, monkeypatch):
    """Found by a sweep (2026-12-04): each `--quick` run replaced its benchmark's recorded JSON
    with one short round; and a result's commit did not say the code measured was uncommitted."""
    monkeypatch.setattr(_setup, "RESULTS", tmp_path)
    path = _setup.save("unit", {"command": "python -m benchmarks.bench_grpc --quick"})
    assert path == tmp_path / "quick" / "unit.json" and not (tmp_path / "unit.json").exists()
    assert _setup.save("unit", {"command": "python -m benchmarks.bench_grpc"}) == tmp_path / "unit.json"
    commit = _setup.git_commit()
    assert commit is None or len(commit.removesuffix("+dirty")) == 40


def test_switch_time_and_phase_stats_are_read_from_the_samples():
    S = _traffic.Sample
    samples = [S(0.0, 0.01, 200, "unversioned", "b"), S(0.1, 0.11, 200, "unversioned", "a"),
               S(0.2, 0.21, 200, "unversioned", "b"), S(0.3, 0.32, 200, "unversioned", "a"),
               S(0.4, 0.41, 200, "unversioned", "a")]
    assert _traffic.switch_time(samples, 0.0, "a") == 0.32          # for good: after the last "b"
    assert _traffic.switch_time(samples, 0.0, "b") is None
    assert _traffic.switch_time(samples, 0.35, "a") == pytest.approx(0.06)
    mixed = samples + [S(0.5, 0.6, 503, "stable", error="boom"), S(0.6, 0.61, 0, "stable", error="refused")]
    st = _traffic.phase_stats(mixed)
    assert st["requests"] == 7 and st["non_200"] == 2 and st["routes"]["stable"]["non_200"] == 2
    assert st["routes"]["unversioned"]["non_200"] == 0 and st["p50_ms"] == 10.0
    assert _traffic.identify([[0.5, 0.5]], {"x": [[0.1, 0.9]], "y": [[0.5, 0.5]]}) == "y"


def test_a_phase_window_waits_for_the_requests_in_flight_at_its_end():
    """A request sent inside a phase that fails after the phase ends still counts in it."""
    import http.server
    import threading

    answered, arrived = threading.Event(), threading.Event()

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            arrived.set()
            answered.wait(5)                        # held until the phase has ended
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    load = _traffic.LoadGen(f"http://127.0.0.1:{srv.server_address[1]}", "m", {"instances": [1]},
                            clients=1, max_requests=1, max_seconds=10)
    try:
        start = time.monotonic()
        load.start()
        assert arrived.wait(5)                      # the request is in flight
        end = time.monotonic()
        threading.Timer(0.2, answered.set).start()
        samples = load.window(start, end, settle=5)
        assert [s.status for s in samples] == [503]
    finally:
        answered.set()
        load.stop()
        srv.shutdown()
        srv.server_close()


def test_publish_harness_makes_identical_copies_with_every_method(sshd, tmp_path):
    if shutil.which("rsync") is None or shutil.which("scp") is None:
        pytest.skip("SKIPPED LOUDLY: `rsync` or `scp` missing; install the Debian packages rsync and "
                    "openssh-client (`make system-deps`)")
    src = bench_publish.make_dataset(tmp_path / "m", "many", files=5)
    big = bench_publish.make_dataset(tmp_path / "big", "large", size_mb=1)
    dest = tmp_path / "dest"
    dest.mkdir()
    raw = bench_publish.bench(sshd, {"many_5_files": src, "large_1mb": big}, dest, repeats=1, check=True)
    assert raw["many_5_files"]["files"] == 8 and raw["many_5_files"]["already_present_bytes"] == [0, 0]
    assert set(raw["large_1mb"]["seconds"]) == set(bench_publish.METHODS)
    summary = bench_publish.summarize(raw)
    checks = bench_publish.verdicts(summary)
    assert {c["target"] for c in checks} >= {"already present: 0 bytes", "publish time <= rsync time",
                                             "publish >= 1.0x scp -r's speed", "publish >= 1.0x SFTP put's speed",
                                             "already present: < 0.3 s"}
    assert all(c["met"] for c in checks if c["target"] == "already present: 0 bytes")
    text = bench_publish.render(summary, checks)
    assert "many_5_files" in text and "large_1mb" in text and "vs scp" in text


def test_publish_verdicts_compare_exact_ratios_not_the_rounded_figures():
    # scp 0.995 s vs ours 1.0 s is 0.995x scp's speed: shown as 0.99-1.0, but not "met"
    secs = {"scp": [0.995], "rsync": [1.0], "sftp_put": [0.9975], "ours_publish": [1.0],
            "ours_already_present": [0.2996], "ours_present_cold": [0.3]}
    raw = {"large_1mb": {"mb": 1.0, "files": 3, "seconds": secs, "already_present_bytes": [0]},
           "many_5_files": {"mb": 1.0, "files": 8, "seconds": {**secs, "rsync": [0.9996]},
                            "already_present_bytes": [0]}}
    summary = bench_publish.summarize(raw)
    checks = {(c["model"], c["target"]): c for c in bench_publish.verdicts(summary)}
    assert summary["large_1mb"]["ours_publish_vs_sftp_put_throughput"] == 1.0    # rounded for the table
    assert checks[("large_1mb", "publish >= 1.0x SFTP put's speed")]["met"] is False
    assert checks[("large_1mb", "publish >= 1.0x scp -r's speed")]["met"] is False
    assert checks[("many_5_files", "publish time <= rsync time")]["met"] is False    # 1.0004x rsync's time
    assert checks[("large_1mb", "already present: < 0.3 s")]["met"] is True
    assert checks[("large_1mb", "already present: 0 bytes")]["met"] is True


def test_rollback_benchmark_round_measures_a_deploy_and_a_rollback(deploy_env):
    rig = bench_rollback.Rig(deploy_env)
    try:
        warm = rig.one_round(0, cold=False)
    finally:
        rig.close()
    rb, fresh = warm["rollback"], warm["fresh_deploy"]
    assert rb["to_version"] == rig.v1 and set(rb["steps"]) == {"switch", "verify"}
    assert rb["in_process_s"] is not None and rb["end_to_end_s"] is not None and fresh["end_to_end_s"] is not None
    assert rb["in_process_s"] <= rb["command_seconds"] and "publish" in fresh["steps"]
    deploy_env.serves(rig.host, rig.v1)
    summary = bench_rollback.summarize([warm])
    checks = bench_rollback.verdicts(summary)
    assert summary["warm"]["rounds"] == 1 and len(checks) == 2 and "cold" not in summary
    assert "in_process" in bench_rollback.render(summary, checks)


def test_rollback_benchmark_with_a_fleet_watches_the_last_host_and_checks_no_one_host_target(deploy_env):
    rig = bench_rollback.Rig(deploy_env, hosts=2)
    try:
        assert rig.host is deploy_env.hosts[-1] and len(deploy_env.hosts) == 2
        warm = rig.one_round(0, cold=False)
    finally:
        rig.close()
    assert warm["rollback"]["end_to_end_s"] is not None and warm["rollback"]["to_version"] == rig.v1
    for h in deploy_env.hosts:
        deploy_env.serves(h, rig.v1)
    summary = bench_rollback.summarize([warm])
    assert bench_rollback.verdicts(summary, hosts=2) == []
    assert "MISSED" not in bench_rollback.render(summary, []) and len(bench_rollback.verdicts(summary)) == 2


def test_availability_phase_counts_every_request(deploy_env):
    host = deploy_env.add_host("file")
    v1 = deploy_env.register("a")
    deploy_env.promote(v1)
    assert deploy_env.deploy().status == "deployed"
    load = _traffic.LoadGen(host.rest_url, deploy_env.model, deploy_env.bundles.golden("a")["request"],
                            clients=2, max_requests=200, max_seconds=30).start()
    try:
        phase = bench_availability.run_phase(load, "idle", None, seconds=2.0, lead=0, action_timeout=10)
    finally:
        load.stop()
    assert phase["requests"] > 0 and phase["non_200"] == 0
    assert phase["routes"]["stable"]["requests"] > 0 and phase["routes"]["unversioned"]["requests"] > 0
    checks = bench_availability.verdicts([phase])
    assert checks == [{"target": "idle: 0 non-200 responses", "value": 0, "met": True}]
    assert "idle" in bench_availability.render([phase], checks)


def test_e2e_breakdown_and_table():
    doc = {"seconds": 2.0, "timings": {"resolve_version": 0.1, "fetch_from_registry": 0.3, "hosts": 1.2},
           "hosts": [{"steps": [{"kind": "publish", "seconds": 0.2}, {"kind": "load_validation", "seconds": 0.1},
                                {"kind": "wait_validation", "seconds": 0.3},
                                {"kind": "smoke_validation", "seconds": 0.4},
                                {"kind": "load_main", "seconds": 0.05}, {"kind": "wait_main", "seconds": 0.05},
                                {"kind": "switch", "seconds": 0.04}, {"kind": "verify", "seconds": 0.06}]}]}
    b = bench_e2e.deploy_breakdown(doc, wall=2.5)
    assert b["load"] == 0.5 and b["smoke"] == 0.4 and b["publish"] == 0.2 and b["switch"] == 0.04
    assert b["fetch_from_registry"] == 0.3 and "hosts" not in b and b["process_start_and_rest"] == 0.5
    # the two host phases are the steps' sums: not rows of their own beside them (counted twice)
    phased = bench_e2e.deploy_breakdown({**doc, "timings": {**doc["timings"], "prepare_hosts": 1.0,
                                                             "switch_hosts": 0.2}}, wall=2.5)
    assert "prepare_hosts" not in phased and "switch_hosts" not in phased
    no_timings = bench_e2e.deploy_breakdown({k: v for k, v in doc.items() if k != "timings"}, wall=2.5)
    assert no_timings["outside_host_steps"] == pytest.approx(0.8)
    stages = {"v1.train": 10.0, "v1.gate": 3.0, "v1.promote": 0.5, "v1.deploy": 2.5}
    text = bench_e2e.render(stages, {"v1": {"breakdown": b}})
    assert "train" in text and "deploy: load" in text and "16.0" in text


def test_run_all_knows_the_benchmarks_and_refuses_others(capsys):
    assert run_all.ORDER == ("publish", "rollback", "availability", "e2e", "grpc", "fleet", "store", "warmup",
                             "latency", "rest_cpu")
    quick, full = run_all.plan(True), run_all.plan(False)
    assert set(quick) == set(full) == set(run_all.ORDER)
    assert full["publish"]["sizes_mb"] == [200, 1000] and full["publish"]["many_files"] == 1500
    assert [x["dest_root"] for x in full["publish"]["setups"]] == ["/var/tmp", "/dev/shm"]   # disk first
    assert full["availability"]["clients"] == 8 and quick["rollback"]["rounds"] < full["rollback"]["rounds"]
    for name in run_all.ORDER:     # each benchmark's run() accepts what run_all passes
        import inspect

        params = inspect.signature(run_all._module(name).run).parameters
        assert set(full[name]) | {"wait", "command"} <= set(params), name
    assert run_all.main(["--only", "nope"]) == 2
    assert "unknown benchmark" in capsys.readouterr().err


def test_grpc_benchmark_measures_both_apis_on_the_digits_model(tmp_path):
    """Smallest form of bench_grpc: one short setting per API, results and table from it."""
    doc = bench_grpc.run(seconds=0.3, clients=[1], batches=[2], max_requests=50, wait=0, results_dir=tmp_path,
                         log=lambda s: None)
    assert [(r["api"], r["batch"], r["clients"]) for r in doc["rows"]] == [("REST", 2, 1), ("gRPC", 2, 1)]
    assert all(0 < r["requests"] <= 50 and r["errors"] == 0 for r in doc["rows"])
    assert doc["targets"][0] == {"target": "gRPC and REST return the same probabilities", "value": True, "met": True}
    assert json.loads((tmp_path / "grpc.json").read_text())["rows"] == doc["rows"]
    text = bench_grpc.render(doc["rows"], doc["targets"])
    assert "vs REST" in text and "gRPC" in text
    assert bench_grpc.verdicts([{"errors": 1}], False)[1] == {"target": "0 failed requests", "value": 1, "met": False}


def test_rest_cpu_benchmark_measures_this_checkout_and_a_baseline_interleaved(tmp_path, capsys):
    """Smallest form of bench_rest_cpu: this checkout as its own baseline, one short round."""
    lines: list[str] = []
    doc = bench_rest_cpu.run(n=20, rounds=1, baseline=_setup.REPO, results_dir=tmp_path, log=lines.append)
    assert [r["server"] for r in doc["rows"]] == ["baseline", "this"]
    assert all(r["predict_cpu_ms"] >= 0 and r["status_wall_ms"] > 0 for r in doc["rows"])
    assert [line.split(":")[0] for line in lines] == ["round 1 baseline", "round 1 this"]
    assert json.loads((tmp_path / "rest_cpu.json").read_text())["rows"] == doc["rows"]
    assert "this / baseline: predict CPU" in capsys.readouterr().out


def test_fleet_benchmark_reads_cpu_time_of_the_machine_and_of_given_processes():
    from benchmarks import bench_fleet

    busy0, mine0 = bench_fleet.machine_busy_s(), bench_fleet.process_cpu_s([os.getpid()])
    end = time.process_time() + 0.3
    while time.process_time() < end:      # bounded: 0.3 s of this process's CPU
        sum(range(1000))
    assert bench_fleet.process_cpu_s([os.getpid()]) - mine0 >= 0.25
    assert bench_fleet.machine_busy_s() - busy0 >= 0.25
    assert bench_fleet.process_cpu_s([2 ** 22 + 7]) == 0.0          # gone: counted as nothing
    # a child's CPU counts once it exited and was waited for: in getrusage (the CLI) and, with
    # reaped_children, in its parent's /proc counters (sshd and its sessions)
    cli0 = bench_fleet.children_cpu_s()
    reaped0 = bench_fleet.process_cpu_s([os.getpid()], reaped_children=True)
    own0 = bench_fleet.process_cpu_s([os.getpid()])
    subprocess.run([sys.executable, "-c", "import time\nend = time.process_time() + 0.3\n"
                    "while time.process_time() < end: pass"], check=True, timeout=60)
    assert bench_fleet.children_cpu_s() - cli0 >= 0.25
    assert (bench_fleet.process_cpu_s([os.getpid()], reaped_children=True) - reaped0) \
        - (bench_fleet.process_cpu_s([os.getpid()]) - own0) >= 0.25
    rows = [{"model": "tiny", "target": "file", "mode": "rollout", "hosts": n, "wall_s": w, "cpu_busy_s": b,
             "server_cpu_s": s, "cli_cpu_s": c, "sshd_cpu_s": None}
            for n, w, b, s, c in ((1, 1.0, 1.2, 0.3, 0.8), (8, 2.0, 3.6, 2.4, 1.15))]
    cell = bench_fleet.summarize(rows, 8)["tiny"]
    assert cell["rollout_ratio"] == 2.0 and cell["rollout_8_busy_cpu_s"] == 3.6
    assert cell["rollout_8_server_cpu_s"] == 2.4 and cell["rollout_1_busy_cpu_s"] == 1.2
    # what each of the 7 added hosts cost, by where the CPU went (no sshd on file:// hosts)
    assert cell["cpu_s_per_added_host"] == {"busy": 0.343, "server": 0.3, "cli": 0.05}
    assert "each added host: machine +0.343, its model server +0.300, the deploying CLI +0.050 CPU-s" in \
        bench_fleet.render({"tiny": cell}, None, [], 8)
    # the ssh rows as the deploy user are their own cell, judged against the tiny model's target
    rows += [{**r, "target": bench_fleet.SSH_DEPLOY_USER, "wall_s": w}
             for r, w in zip(rows, (1.0, 1.4))]
    summary = bench_fleet.summarize(rows, 8)
    assert summary["tiny"]["rollout_ratio"] == 2.0 and summary["tiny ssh (deploy user)"]["rollout_ratio"] == 1.4
    checks = {c["target"]: c for c in bench_fleet.verdicts(summary, None, 8)}
    assert not checks["tiny model: 8 hosts <= 1.5x one host (--bake 0)"]["met"]
    assert checks["tiny ssh (deploy user) model: 8 hosts <= 1.5x one host (--bake 0)"] == {
        "target": "tiny ssh (deploy user) model: 8 hosts <= 1.5x one host (--bake 0)", "value": 1.4, "met": True}


def test_subreaper_counts_the_cpu_of_orphans_and_keeps_the_exit_status(tmp_path):
    """sshd orphans a non-root user's session; under benchmarks/subreaper.py its CPU is still
    counted (the wrapper waits for it, so it reaches the wrapper's reaped-children time)."""
    from types import SimpleNamespace

    from benchmarks import bench_fleet, subreaper

    burn = (f"{sys.executable} -c 'import time\nend = time.process_time() + 0.3\n"
            f"while time.process_time() < end: pass' &")
    cli0, start = bench_fleet.children_cpu_s(), time.monotonic()
    r = subprocess.run([*subreaper.PREFIX, "sh", "-c", f"{burn} exit 3"], timeout=60)
    # the shell exited at once; the wrapper waited for its orphan and kept the shell's status
    assert r.returncode == 3 and time.monotonic() - start >= 0.25
    assert bench_fleet.children_cpu_s() - cli0 >= 0.25
    # an sshd's share is read from the wrapper and from sshd itself (its PidFile)
    server = SimpleNamespace(proc=SimpleNamespace(pid=4242), dir=tmp_path)
    assert subreaper.sshd_pids(server) == [4242]
    (tmp_path / "sshd.pid").write_text("4343\n")
    assert subreaper.sshd_pids(server) == [4242, 4343]


def test_subreaper_still_waits_for_the_orphans_when_terminated_after_its_command_exited():
    """sshd exits on SIGTERM before its sessions do; a SIGTERM reaching the wrapper after it
    reaped sshd was sent to that pid again: ProcessLookupError, the wrapper died, orphans left."""
    import signal

    from benchmarks import subreaper

    proc = subprocess.Popen([*subreaper.PREFIX, "sh", "-c", "sleep 2 & exit 3"])
    orphan = None
    try:
        deadline = time.monotonic() + 10
        while orphan is None and time.monotonic() < deadline:     # the shell reaped, sleep adopted
            try:
                kids = open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()
                names = [open(f"/proc/{k}/comm").read().strip() for k in kids]
            except OSError:
                kids, names = [], []
            if names == ["sleep"]:
                orphan = int(kids[0])
            else:
                time.sleep(0.01)
        assert orphan is not None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 3                # the command's status, after its orphan
        assert not os.path.exists(f"/proc/{orphan}")     # waited for: gone, not left behind
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if orphan is not None and os.path.exists(f"/proc/{orphan}"):
            os.kill(orphan, signal.SIGKILL)


def test_subreaper_wait_sessions_returns_once_every_session_is_reaped(tmp_path):
    """The fleet and publish benchmarks read sshd's session CPU after a fixed 0.2-0.3 s sleep: a
    session still ending then was missed, or counted in the next measurement. They now wait
    (bounded) until the wrapper has no child but sshd and sshd none."""
    from types import SimpleNamespace

    from benchmarks import subreaper

    # "sshd" (sh, reaping its session: sleep 1.5) and an orphaned session (sleep 1)
    proc = subprocess.Popen([*subreaper.PREFIX, "sh", "-c", "(sleep 1 &); sleep 1.5 & wait; exec sleep 30"])
    try:
        deadline, sshd = time.monotonic() + 10, None
        while sshd is None and time.monotonic() < deadline:        # the one with a child is "sshd"
            sshd = next((k for k in subreaper._children(proc.pid) if subreaper._children(k)), None)
            if sshd is None:
                time.sleep(0.01)
        assert sshd is not None
        (tmp_path / "sshd.pid").write_text(f"{sshd}\n")
        server = SimpleNamespace(proc=proc, dir=tmp_path)
        assert subreaper.wait_sessions(server, timeout=0.05) is False      # both still running
        assert subreaper.wait_sessions(server, timeout=10) is True
        assert subreaper._children(proc.pid) == [sshd] and subreaper._children(sshd) == []
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_warmup_benchmark_reads_the_first_answers_of_the_new_version():
    S = _traffic.Sample
    samples = [S(0.0, 0.003, 200, "unversioned", "a"), S(0.5, 0.502, 200, "unversioned", "a"),
               S(1.0, 1.004, 200, "unversioned", "a"), S(1.1, 1.12, 503, "unversioned"),
               S(1.2, 1.215, 200, "unversioned", "b"), S(1.3, 1.302, 200, "unversioned", "b"),
               S(1.4, 1.42, 200, "unversioned", "b"), S(1.5, 1.501, 200, "unversioned", "b")]
    assert bench_warmup.first_answers(samples, "b", 1.0, n=3) == {"first_ms": 15.0, "slowest_of_first_ms": 20.0,
                                                                  "n": 3}
    assert bench_warmup.first_answers(samples, "b", 1.35, n=5)["first_ms"] == 20.0
    assert bench_warmup.first_answers(samples, "c", 0.0) is None
    assert bench_warmup.steady_ms(samples, "a", 0.0, 1.0) == 3.0 and bench_warmup.steady_ms(samples, "a", 2, 3) is None
    deploys = [{"warmup_file": w, "first_ms": f, "slowest_of_first_ms": f and f + 1, "baseline_ms": 3.0}
               for w, f in ((False, 16.0), (False, 18.0), (True, 4.0), (True, None))]
    summary = bench_warmup.summarize(deploys)
    assert summary["without warmup file"] == {"deploys": 2, "first_ms": 17.0, "first_ms_max": 18.0,
                                              "slowest_of_first_ms": 18.0, "baseline_ms": 3.0}
    assert summary["with warmup file"]["deploys"] == 1 and summary["with warmup file"]["first_ms"] == 4.0
    assert "with warmup file" in bench_warmup.render(summary)


def test_warmup_benchmark_deploys_a_version_that_carries_the_warmup_file(deploy_env, tmp_path):
    rig = bench_warmup.Rig(deploy_env, tmp_path)
    try:
        d = rig.deploy("b", warmup=True)
    finally:
        rig.close()
    assert d["warmup_file"] and d["kind"] == "b" and d["n"] >= 1 and d["first_ms"] > 0 and d["baseline_ms"] > 0
    deploy_env.serves(rig.host, d["version"])
    from mlproject.export import WARMUP_FILE

    published = rig.host.base / deploy_env.model / str(d["version"]) / WARMUP_FILE
    assert published.stat().st_size > 0       # the file travelled: registry -> publish -> the host


def test_delay_proxy_adds_its_round_trip_and_passes_bytes_and_half_close_intact():
    """The latency benchmark's distant host: each exchange through the proxy takes >= rtt."""
    import socket
    import threading
    import time

    from tests.lab.netfaults import DelayProxy

    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(5)

    def echo():
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(5)
            while data := conn.recv(65536):
                conn.sendall(data)
    threading.Thread(target=echo, daemon=True).start()
    proxy = DelayProxy(srv.getsockname()[1], 0.1)
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as c:
            payload = bytes(range(256)) * 1024
            for _ in range(2):
                t0 = time.monotonic()
                c.sendall(b"x")
                assert c.recv(1) == b"x"
                assert 0.1 <= time.monotonic() - t0 < 2.0
            c.sendall(payload)
            c.shutdown(socket.SHUT_WR)            # the echo server sees EOF and closes: so do we
            got = b""
            while chunk := c.recv(65536):
                got += chunk
            assert got == payload
        assert proxy.connections == 1
    finally:
        proxy.stop()
        srv.close()


def test_latency_benchmark_summary_counts_round_trips_from_the_slope():
    from benchmarks import bench_latency

    rows = [{"code": "this", "rtt_ms": rtt, "wall_s": wall} for rtt, wall in
            ((0.0, 1.0), (0.0, 1.2), (0.0, 5.0), (20.0, 3.0), (20.0, 3.2), (20.0, 2.9), (50.0, 7.1))]
    s = bench_latency.summarize(rows)["this"]
    assert s["wall_s"] == {"0": 1.2, "20": 3.0, "50": 7.1}
    assert s["sequential_round_trips"] == {"20": 90.0, "50": 118.0}
    assert "round trips @50 ms" in bench_latency.render({"this": s})


def test_availability_zero_non_200_is_not_met_when_no_request_was_sent_through_the_phase():
    """A load generator that stopped early (its per-client bound spent) answers no non-200 either."""
    def phase(name, requests, after, command="sync deploy"):
        return {"phase": name, "command": command, "requests": requests, "non_200": 0,
                "requests_after_command": after, "action": {"exit": 0, "expected_exit": 0}}

    checks = bench_availability.verdicts([phase("idle", 0, None, command=None), phase("deploy", 500, 0),
                                          phase("rollback", 500, 40)])
    met = {c["target"]: c["met"] for c in checks}
    assert met["idle: 0 non-200 responses"] is False
    assert met["deploy: 0 non-200 responses"] is False           # nothing sent after the command exited
    assert met["rollback: 0 non-200 responses"] is True
    assert any(not c["met"] and c["target"].startswith("deploy: requests sent") for c in checks)


def test_fleet_breach_zero_non_200_on_the_other_hosts_needs_their_requests_through_the_deploy():
    """HostLoad is bounded (60,000 answers in all): once spent, no host answers a non-200 either."""
    from benchmarks import bench_fleet

    # (receive time, host, status): h1 answered through the deploy [10, 20] and after; h2 stopped at 12
    samples = [(t, "h0", 200) for t in (9, 15, 21)] + [(t, "h1", 200) for t in (9, 11, 19, 21)] + \
        [(t, "h2", 200) for t in (9, 11, 12)]
    traffic = bench_fleet.other_hosts_traffic(samples, ["h0", "h1", "h2"], "h0", 10.0, 20.0)
    assert traffic == {"h1": {"during_deploy": 2, "after_exit": 1}, "h2": {"during_deploy": 2, "after_exit": 0}}
    breach = {"bake_s": 2.0, "breach_to_canary_back_s": 3.0, "exit_code": 3, "non_200_on_other_hosts": 0,
              "other_hosts_traffic": traffic}
    met = {c["target"]: c["met"] for c in bench_fleet.verdicts({}, breach, 8)}
    assert met["zero non-200 answers on the non-canary hosts"] is False
    breach["other_hosts_traffic"] = {"h1": traffic["h1"]}
    met = {c["target"]: c["met"] for c in bench_fleet.verdicts({}, breach, 8)}
    assert met["zero non-200 answers on the non-canary hosts"] is True
    del breach["other_hosts_traffic"]                                # not counted: not a finding
    met = {c["target"]: c["met"] for c in bench_fleet.verdicts({}, breach, 8)}
    assert met["zero non-200 answers on the non-canary hosts"] is False


def test_fleet_rounds_alternate_which_fleet_size_deploys_first(monkeypatch):
    """With the one host always first, it always deployed right after the previous mode's fleet
    (its eight servers still busy) and the fleet never after a fleet: the baseline bore more noise."""
    from types import SimpleNamespace

    from benchmarks import bench_fleet

    class Env:
        def __init__(self):
            self.env, self.fleet, self.v = {}, SimpleNamespace(), 0

        def add_hosts(self, n, target):
            return []

        def register(self, kind):
            self.v += 1
            return self.v

        def promote(self, v):
            pass

        def deploy(self):
            return SimpleNamespace(status="deployed")

        def close(self):
            pass

    lab = SimpleNamespace(deploy_env=Env, set_env=lambda env: None)
    monkeypatch.setattr(bench_fleet, "_timed_deploy", lambda env, model, target, n, mode, flags, i, v, log:
                        {"hosts": n, "mode": mode, "round": i})
    rows = bench_fleet.fleet_rounds(lab, (1, 8), 2, "tiny", None, lambda s: None)
    for mode in ("rollout", "sequential"):
        firsts = [next(r["hosts"] for r in rows if r["mode"] == mode and r["round"] == i) for i in range(2)]
        assert firsts == [1, 8]


def test_latency_rounds_alternate_the_order_of_the_round_trips():
    """The RTT 0 baseline was always deployed first in every round (after the slowest one of the
    round before); the slope is a difference against it, so the order alternates by round."""
    from pathlib import Path

    from benchmarks import bench_latency

    codes = {"baseline": Path("/b"), "this": Path("/t")}
    even = bench_latency.round_order(codes, (0.0, 0.02, 0.05), 0)
    odd = bench_latency.round_order(codes, (0.0, 0.02, 0.05), 1)
    assert [(n, r) for n, _, r in even] == [(n, r) for n in ("baseline", "this") for r in (0.0, 0.02, 0.05)]
    assert [(n, r) for n, _, r in odd] == [(n, r) for n in ("this", "baseline") for r in (0.05, 0.02, 0.0)]
    assert {c for _, c, _ in even} == {Path("/b"), Path("/t")}


def test_availability_phases_cover_the_time_between_them(monkeypatch):
    """Each phase counted the requests sent from its own start: those sent while the previous
    phase waited for its in-flight requests, or while the registry was moved, were in no phase."""
    import subprocess as sp
    from types import SimpleNamespace

    windows = []

    class Load:
        def window(self, start, end):
            windows.append((start, end))
            time.sleep(0.05)                 # the previous phase's in-flight requests, waited for
            return [_traffic.Sample(start, start + 0.001, 200, "unversioned")]

    env = SimpleNamespace(promote=lambda v: time.sleep(0.05))        # the registry moved: time passes
    monkeypatch.setattr(bench_availability, "run_cli", lambda *args, timeout: (
        sp.CompletedProcess(args, 0, "", ""), time.monotonic(), time.monotonic()))
    phases = bench_availability.run_phases(Load(), env, {"v1": 1, "v2": 2, "v3": 3}, seconds=0.05,
                                           action_timeout=5, log=lambda s: None)
    assert [p["phase"] for p in phases] == list(bench_availability.PHASES)
    assert all(b[0] == a[1] for a, b in zip(windows, windows[1:]))    # contiguous: no gap
    assert all("window" not in p for p in phases)


def test_compare_fleet_alternates_which_fleet_size_deploys_first(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from benchmarks import _setup, compare_fleet

    order = []

    class Env:
        def __init__(self):
            self.env, self.n = {}, None

        def add_hosts(self, n, target):
            self.n = n

        def register(self, kind):
            order.append(self.n)
            return 1

        def promote(self, v):
            pass

        def deploy(self):
            return SimpleNamespace(status="deployed")

    class Lab:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        deploy_env = Env

        def set_env(self, env):
            pass

    monkeypatch.setattr(_setup, "Lab", Lab)
    monkeypatch.setattr(compare_fleet, "_deploy", lambda repo: 1.0)
    compare_fleet.run(baseline=tmp_path, rounds=2, n_hosts=8, target="file", wait=0, results_dir=tmp_path,
                      log=lambda s: None)
    # round 1: baseline 1, 8, this 1, 8; round 2: this 8, 1, baseline 8, 1
    assert order[2:] == [1, 8, 1, 8, 8, 1, 8, 1]            # after the first deploy of each
