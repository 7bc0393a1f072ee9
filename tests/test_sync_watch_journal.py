"""``mlops sync watch`` under systemd (deploy/mlops-watch.service): its lines reach the journal at
their priority (found by review, 2026-12-07, nineteenth stop; each test fails on the code before).

journald stores a service's stderr line by line at priority info unless a line begins with
``<N>`` (``SyslogLevelPrefix=``, on by default). Every line of the watch — an MLflow outage, a
failed deploy whose hosts were put back, the command's own ``error:`` line — was stored as info,
so ``journalctl -p err -u mlops-watch`` (or an alert on it) showed nothing; and a failed deploy pass
was an info line even for a log reader that knows levels. The journal is recognised as systemd
says: ``JOURNAL_STREAM`` names stderr's device and inode.

Its report at exit (stdout: the journal too) printed each of the 200 passes it keeps: an idle
watch stopped by systemd wrote 200 "up_to_date: hosts serve v5" lines at every stop, and the
passes that did something were lost among them. A run of passes that said the same is one line.

The command against an MLflow address nothing listens on (127.0.0.1); the loop on stand-ins.
Every wait is bounded.
"""
from __future__ import annotations

import io
import logging
import os
import subprocess
import sys

from mlops.ports import free_port
from mlops_common import log
from serving_sync.watch import Watcher
from tests.helpers import REPO


def test_the_watchs_passes_carry_their_journal_priority():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(log.RedactingFormatter("%(message)s", journal=True))
    watch_logger = logging.getLogger("mlops.sync.watch")
    passes = iter([("up_to_date", 1, "hosts serve v1"),
                   ("failed", 2, "deploy of v2 failed on host web-1 at step 'smoke': golden_outputs; put back"),
                   ("skipped", 2, "v2's deploy failed; not tried again"),
                   ("up_to_date", 1, "hosts serve v1")])

    def reconcile():
        try:
            return next(passes)
        except StopIteration:
            w.stop_event.set()
            raise RuntimeError("a traceback's\nsecond line") from None

    w = Watcher(reconcile, interval=0.5, max_seconds=30)
    level = watch_logger.level
    watch_logger.addHandler(handler)
    watch_logger.setLevel(logging.INFO)
    try:
        w.run()
    finally:
        watch_logger.removeHandler(handler)
        watch_logger.setLevel(level)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("<6>reconcile (start): up_to_date"), lines
    assert lines[1].startswith("<3>reconcile (interval): failed: deploy of v2"), lines
    assert lines[2].startswith("<4>reconcile (interval): skipped"), lines
    assert lines[3].startswith("<6>reconcile (interval): up_to_date"), lines
    assert lines[4].startswith("<3>reconcile (interval) failed: unexpected RuntimeError"), lines
    assert lines[5] == "<3>second line (a bug in mlops; the watch goes on and tries again at the next pass)", lines
    assert len(lines) == 6, lines


def _journal_lines(run) -> list[str]:
    """The lines ``run()`` logs through the watch's logger, as journald gets them (``<N>`` first)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(log.RedactingFormatter("%(message)s", journal=True))
    watch_logger = logging.getLogger("mlops.sync.watch")
    level = watch_logger.level
    watch_logger.addHandler(handler)
    watch_logger.setLevel(logging.INFO)
    try:
        run()
    finally:
        watch_logger.removeHandler(handler)
        watch_logger.setLevel(level)
    return stream.getvalue().splitlines()


def _err(lines: list[str]) -> list[str]:
    """What `journalctl -p err` shows of ``lines``: priorities 0 to 3."""
    return [x for x in lines if x[:3] in ("<0>", "<1>", "<2>", "<3>")]


def test_the_end_of_an_outage_shows_with_the_filter_that_showed_the_outage(tmp_path):
    """Found by review (2026-12-07, twenty-second stop): an outage (MLflow, the ledger or a host
    down) and a hosts file the watch refused are error lines, but their end ("reconcile
    recovered ...", "hosts file ... changed: ...") was info: `journalctl -u mlops-watch -p err`, or
    an alert on it, showed the outage start and never end, and the on-call went on chasing it.
    Both ends are now at the error's own priority."""
    from serving_sync.hosts import load_hosts
    from serving_sync.watch import WatchedHosts

    passes = iter([("error", None, "reading registered model 'digits': cannot reach the MLflow server"),
                   ("error", None, "reading registered model 'digits': cannot reach the MLflow server"),
                   ("up_to_date", 1, "hosts serve v1")])

    def reconcile():
        try:
            return next(passes)
        except StopIteration:
            w.stop_event.set()
            return "up_to_date", 1, "hosts serve v1"

    w = Watcher(reconcile, interval=0.5, max_seconds=60)
    w.wake.wait = lambda timeout: False          # no wait between the passes: the lines' levels alone
    err = _err(_journal_lines(w.run))
    assert err[0].startswith("<3>reconcile (start) failed: reading registered model 'digits'"), err
    assert err[-1].startswith("<3>reconcile recovered after 2 failed passes"), err
    assert len(err) == 2, err

    path = tmp_path / "hosts.toml"
    good = '[[hosts]]\nname = "a"\ntarget = "file:///srv/a"\nrest_url = "http://127.0.0.1:9"\n'
    path.write_text(good)

    def load():
        return load_hosts(str(path), {})

    watched = WatchedHosts(load(), path, load)

    def edits():
        path.write_text(good.replace("rest_url = ", "rest_url"))      # a typo: refused, an error line
        watched()
        path.write_text(good.replace('"a"', '"b"'))                    # fixed
        assert [h.name for h in watched()] == ["b"]

    err = _err(_journal_lines(edits))
    assert len(err) == 2 and "cannot be used" in err[0], err
    assert err[1].startswith(f"<3>hosts file {path} changed: added b; removed a"), err


def test_a_watch_stopped_during_an_outage_does_not_say_it_recovered():
    """Found by review (2026-12-07, twenty-second stop): since a first signal stops a pass that
    only reads where it is (an MLflow that does not answer), a watch stopped during an MLflow
    outage ended on a ``stopped`` pass, and any pass that was not an error ended the outage:
    "reconcile recovered after N failed passes", at the error's level, for an MLflow still down.
    A stopped pass says nothing of the outage."""
    passes = iter([("error", None, "reading registered model 'digits': the MLflow server did not answer"),
                   ("error", None, "reading registered model 'digits': the MLflow server did not answer")])

    def reconcile():
        try:
            return next(passes)
        except StopIteration:           # the first signal lands in this pass's request
            w.stop_event.set()
            return "stopped", None, "the watch is stopping: its pass stopped before any deploy began"

    w = Watcher(reconcile, interval=0.5, max_seconds=60)
    w.wake.wait = lambda timeout: False
    lines = _journal_lines(w.run)
    assert [p.status for p in w.result.passes] == ["error", "error", "stopped"]
    assert not [x for x in lines if "recovered" in x], lines
    assert _err(lines) == [lines[0]] and lines[-1].startswith("<6>reconcile (interval): stopped"), lines


def _watch(tmp_path, journal: str | None, *args: str) -> tuple[int, str, str]:
    """``mlops sync watch ARGS`` with stderr in a file; ``journal``: "stderr" (JOURNAL_STREAM names
    that file, as systemd sets it), "other" (it names another file: inherited), None (unset)."""
    port = free_port()            # nothing listens there: every pass is an outage
    err, out = tmp_path / f"stderr-{journal}", tmp_path / f"stdout-{journal}"
    other = tmp_path / "other"
    other.write_text("")
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "MLOPS_HOSTS_FILE",
                                                             "MLOPS_WEBHOOK_SECRET")}
    env.update(MLOPS_HOME=str(tmp_path / "home"), MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}",
               MLOPS_SYNC_TARGET=f"file://{tmp_path / 'models'}", MLOPS_SYNC_REST_URL=f"http://127.0.0.1:{port}",
               MLOPS_MODEL_NAME="digits")
    with open(err, "w") as e, open(out, "w") as o:
        if journal is not None:
            st = os.fstat(e.fileno()) if journal == "stderr" else os.stat(other)
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        p = subprocess.run([sys.executable, "-m", "mlops", "sync", "watch", *args], cwd=REPO, env=env,
                           stdout=o, stderr=e, timeout=120)
    return p.returncode, out.read_text(), err.read_text()


def test_under_systemd_an_outage_and_the_commands_error_line_are_journal_errors(tmp_path):
    (tmp_path / "models").mkdir()
    code, out, err = _watch(tmp_path, "stderr", "--interval", "0.5", "--max-seconds", "1")
    assert code == 0, err
    assert err.splitlines()[0].startswith("<3>reconcile (start) failed: reading registered model 'digits': "
                                          "cannot reach the MLflow server"), err
    assert "<" not in out.splitlines()[0], out          # the report on stdout: as it was
    code, _, err = _watch(tmp_path, "stderr", "--once", "--webhook-port", "0")
    assert code == 2 and err.startswith("<3>error: --webhook-port needs MLOPS_WEBHOOK_SECRET"), err
    # JOURNAL_STREAM inherited by a command whose stderr goes elsewhere, or not set: no prefix
    for journal in ("other", None):
        code, _, err = _watch(tmp_path, journal, "--interval", "0.5", "--max-seconds", "1")
        assert code == 0 and err.startswith("reconcile (start) failed: "), err


def test_the_report_says_a_run_of_passes_that_said_the_same_in_one_line(capsys):
    from mlops.commands import sync_text

    said = ([("up_to_date", 1, "hosts serve v1")] * 150 + [("deployed", 2, "deployed v2 of 'digits' to web-1")]
            + [("up_to_date", 2, "hosts serve v2")] * 40)
    passes = iter(said)
    clock = iter(range(100_000))
    w = Watcher(lambda: next(passes), interval=0.5, clock=lambda: next(clock) * 0.5)
    w._pass(0.0, "start")
    for _ in range(len(said) - 1):
        w._pass(0.0, "interval")
    assert len(w.result.passes) == len(said)          # every pass kept, as before
    sync_text.watch(w.result)
    out = capsys.readouterr().out.splitlines()
    last = [p.at for p in w.result.passes]
    assert [line.split(None, 1)[1] for line in out] == [
        "start    up_to_date: hosts serve v1",
        f"interval up_to_date: hosts serve v1 (and 148 more such passes until {last[149]:.1f}s)",
        "interval deployed: deployed v2 of 'digits' to web-1",
        f"interval up_to_date: hosts serve v2 (and 39 more such passes until {last[-1]:.1f}s)"], out
