"""The ``production`` alias and the ledger agree whatever happens between the alias move and
its record: MLflow's answer lost after it applied the move (a proxy forwards the alias write and
drops the response), MLflow gone right after, or the promoting process SIGKILLed at the phases
around the move (held there by ``mlops_common.faultpoint``). ``mlops registry status`` shows every
disagreement; ``mlops registry reconcile`` records what happened, and the "previous production"
replay then sees the move.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from registry import alias_move, deploy_revert, promotion, reconciliation, versions
from registry.ledger import Ledger
from tests.fixtures.faults import final_error_line
from tests.helpers import REPO, run_mlops

BOUNDED = {"MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2"}
TRIES = 1 + int(BOUNDED["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])


def via(proxy) -> dict:
    return {"MLFLOW_TRACKING_URI": proxy.url, **BOUNDED}


def alias_write(method: str, path: str) -> bool:
    return method == "POST" and path.startswith("/api/2.0/mlflow/registered-models/alias")


def rows(model: str) -> list[tuple]:
    return [(e.action, e.outcome, e.from_version, e.to_version) for e in Ledger().entries(model)
            if e.action in ("promote", "rollback", "intent")]


def status(model: str) -> dict:
    """What `mlops registry status --json` shows under "ledger", read by the functions that command
    calls (``cmd_status``), in this process: these tests are about the ledger, not that command
    (whose text this file still reads through the CLI, and test_registry_rollback its --json)."""
    from registry.reconciliation import check_agreement, ledger_view

    return check_agreement(model, entries=ledger_view(model)).to_dict()


def two_promoted_once(make_version) -> tuple[str, int, int]:
    model = os.environ["MLOPS_MODEL_NAME"]
    v1, v2 = make_version(validation_status="passed"), make_version(validation_status="passed")
    promotion.promote(model, v1, actor="alice")
    return model, v1, v2


def test_a_lost_answer_after_mlflow_moved_the_alias_is_recorded_as_the_move(
        make_version, mlflow_server, http_fault_proxy):
    model, v1, v2 = two_promoted_once(make_version)
    proxy = http_fault_proxy(mlflow_server, fail_always=True, match=alias_write, drop_after_forward=True)
    r = run_mlops("registry", "promote", "--version", str(v2), env=via(proxy))
    assert r.returncode == 0, r.stderr
    assert len(proxy.failed) == TRIES and "its answer was lost" in r.stderr   # every answer dropped
    assert versions.production_version(model) == v2
    assert rows(model)[-2:] == [("intent", "pending", v1, v2), ("promote", "ok", v1, v2)]
    intent, move = Ledger().entries(model)[-2:]
    assert move.details["intent"] == intent.id and move.details["answer_lost"] is True
    assert status(model) == {"alias": v2, "ledger": v2, "agrees": True, "open_intents": [], "problem": None}


def test_mlflow_gone_after_applying_the_move_leaves_an_intent_that_reconcile_confirms(
        make_version, mlflow_server, http_fault_proxy):
    model, v1, v2 = two_promoted_once(make_version)
    seen = {"alias": False}

    def alias_and_after(method: str, path: str) -> bool:      # the move applies, then nothing answers
        seen["alias"] = seen["alias"] or alias_write(method, path)
        return seen["alias"]

    proxy = http_fault_proxy(mlflow_server, fail_always=True, match=alias_and_after, drop_after_forward=True)
    r = run_mlops("registry", "promote", "--version", str(v2), "--actor", "carol", env=via(proxy))
    line = final_error_line(r.stderr)
    assert r.returncode != 0 and f"whether production of '{model}' moved to v{v2} is unknown" in line, line
    assert "mlops registry reconcile" in line
    assert versions.production_version(model) == v2                   # MLflow did apply it
    assert rows(model)[-1] == ("intent", "pending", v1, v2)           # the ledger names v2
    doc = status(model)
    assert not doc["agrees"] and f"production is v{v2} but the ledger says v{v1}" in doc["problem"]
    text = run_mlops("registry", "status").stdout
    assert "MISMATCH" in text and "mlops registry reconcile" in text, text

    r = run_mlops("registry", "reconcile", "--actor", "ops")
    assert r.returncode == 0 and "reconciled by ops" in r.stdout, r.stderr
    assert rows(model)[-1] == ("promote", "ok", v1, v2)
    assert status(model)["agrees"] and versions.get_version(model, v2).tags["approved_by"] == "carol"
    r = run_mlops("registry", "reconcile")
    assert r.returncode == 0 and "nothing recorded" in r.stdout                # idempotent
    # the replay sees the reconciled move: rolling back goes to v1
    assert promotion.rollback(model, actor="bob").to_version == v1


def held_promotion(version: int, phase: str, marker, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "MLOPS_TEST_PAUSE_AT": phase, "MLOPS_TEST_PAUSE_MARKER": str(marker),
           "MLOPS_TEST_PAUSE_SECONDS": "120"}
    proc = subprocess.Popen([sys.executable, "-m", "mlops", "registry", "promote", "--version", str(version),
                             "--actor", "carol", *extra], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (marker.exists() and marker.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
            raise AssertionError(f"the promotion never reached {phase}: {proc.communicate()[1][-2000:]}")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)                              # no handler, no finally runs
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return proc


@pytest.mark.parametrize("phase", ["promotion:after_alias", "promotion:after_intent"])
def test_sigkill_around_the_alias_move_never_leaves_production_where_the_ledger_cannot_see(
        make_version, tmp_path, phase):
    model, v1, v2 = two_promoted_once(make_version)
    v3 = make_version(validation_status="passed")
    held_promotion(v2, phase, tmp_path / "marker")
    moved = phase == "promotion:after_alias"
    assert versions.production_version(model) == (v2 if moved else v1)
    assert rows(model)[-1] == ("intent", "pending", v1, v2)           # committed before the move
    doc = status(model)
    assert doc["agrees"] is (not moved) and len(doc["open_intents"]) == 1 and doc["problem"]
    if moved:
        # the next move (no lock left behind by the dead process) records the dead one first
        r = run_mlops("registry", "promote", "--version", str(v3), "--actor", "dave")
        assert r.returncode == 0, r.stderr
        assert rows(model)[-4:] == [("intent", "pending", v1, v2), ("promote", "ok", v1, v2),
                                    ("intent", "pending", v2, v3), ("promote", "ok", v2, v3)]
        assert promotion.rollback(model, actor="bob").to_version == v2
    else:
        r = run_mlops("registry", "reconcile")
        assert r.returncode == 0 and "did not move production" in r.stdout, r.stderr
        assert rows(model)[-1][:2] == ("intent", "failed")
        assert status(model) == {"alias": v1, "ledger": v1, "agrees": True, "open_intents": [],
                                 "problem": None}
        # a move made outside mlops (MLflow UI / API) is shown and recorded too
        versions.set_alias(model, versions.PRODUCTION, v3)
        assert "moved outside mlops" in status(model)["problem"]
        assert run_mlops("registry", "reconcile", "--actor", "carol").returncode == 0
        assert rows(model)[-1] == ("promote", "ok", v1, v3) and status(model)["agrees"]
        # whoever moved it is not known: not the one who recorded it (the MLflow UI said "carol")
        info = versions.get_version(model, v3)
        assert info.tags["approved_by"] == "unknown (moved outside mlops)"
        line = next(x for x in info.description.splitlines() if x.startswith("**Approved by:**"))
        assert line.startswith("**Approved by:** unknown \\(moved outside mlops\\) (**outside mlops**: promote "
                               "v1 → v3 recorded by carol,"), line


def test_a_failed_deploys_revert_records_a_killed_promotion_first(make_version, tmp_path):
    """A promotion killed after moving the alias left its intent open; the failed deploy's revert
    moved production back without recording it, and reconcile then called it 'did not move'."""
    model, v1, v2 = two_promoted_once(make_version)
    held_promotion(v2, "promotion:after_alias", tmp_path / "marker")    # alias on v2, intent open
    assert versions.production_version(model) == v2
    deploy_revert.revert_failed_deploy(model, v2, v1, "smoke test failed", actor="ci")
    assert versions.production_version(model) == v1
    assert rows(model)[-3:] == [("promote", "ok", v1, v2),          # the killed move, recorded first
                                ("intent", "pending", v2, v1), ("rollback", "ok", v2, v1)]
    doc = status(model)
    assert doc["agrees"] and doc["open_intents"] == [], doc


def ledger_whose_last_commit_fails_in_thread_a(monkeypatch) -> Ledger:
    """A ledger whose first commit after thread "A" moved the alias fails (the commit of the ok
    row that closes the move), once."""
    import threading

    import sqlalchemy as sa

    led = Ledger()
    moved, failed_once = threading.Event(), threading.Event()
    point = alias_move._point

    def move_alias(*args):
        point(*args)
        if threading.current_thread().name == "A":
            moved.set()

    monkeypatch.setattr(alias_move, "_point", move_alias)

    @sa.event.listens_for(led._engine, "commit")
    def fail_the_last_commit(conn):
        if threading.current_thread().name == "A" and moved.is_set() and not failed_once.is_set():
            failed_once.set()
            conn.connection.dbapi_connection.execute("ROLLBACK")
            raise sa.exc.OperationalError("COMMIT", {}, Exception("disk I/O error"))

    return led


def promotion_failing_in_thread_a(model: str, version: int, led: Ledger):
    """Promote ``version`` in a started thread named "A" (the one whose last commit fails); the
    thread and a list that gets the raised exception's info."""
    import threading

    failed: list = []
    a = threading.Thread(target=lambda: failed.append(pytest.raises(Exception, promotion.promote, model, version,
                                                                    actor="alice", ledger=led)), name="A")
    a.start()
    return a, failed


def test_a_put_back_after_a_failed_last_commit_never_undoes_a_later_promotion(make_version, monkeypatch):
    """The put-back of a move whose last commit failed ran after the promotion lock was released:
    a promotion that got in between (confirming the first move's intent, then moving on) was
    undone, and the alias no longer matched the ledger."""
    import threading

    model, v1, v2 = two_promoted_once(make_version)
    v3 = make_version(validation_status="passed")
    led = ledger_whose_last_commit_fails_in_thread_a(monkeypatch)
    real = alias_move._restore_unless_recorded

    def another_promotion_first(*args):
        b = threading.Thread(target=lambda: promotion.promote(model, v3, actor="bob"), name="B")
        b.start()
        b.join(timeout=60)
        real(*args)

    monkeypatch.setattr(alias_move, "_restore_unless_recorded", another_promotion_first)
    a, failed = promotion_failing_in_thread_a(model, v2, led)
    a.join(timeout=120)
    assert failed and versions.production_version(model) == v3
    assert status(model)["agrees"]


def test_a_put_back_after_a_failed_last_commit_does_not_hold_up_other_ledger_writers(make_version, monkeypatch):
    """Found by review (2026-12-05, third stop): the put-back read the ledger (SQLite's write lock)
    and kept it while MLflow moved the alias back, so other writers waited on MLflow's answer."""
    import threading

    model, v1, v2 = two_promoted_once(make_version)
    led = ledger_whose_last_commit_fails_in_thread_a(monkeypatch)
    restoring, restore = threading.Event(), alias_move._restore

    release = threading.Event()

    def held_restore(*args):
        restoring.set()
        release.wait(120)                 # MLflow moving the alias back, held until released
        restore(*args)

    monkeypatch.setattr(alias_move, "_restore", held_restore)
    a, failed = promotion_failing_in_thread_a(model, v2, led)
    assert restoring.wait(60)
    written = another_models_row_is_written_while_held(release)
    a.join(timeout=120)
    assert failed and versions.production_version(model) == v1      # put back
    assert written == "written", written


def test_a_promotion_waiting_for_mlflow_does_not_hold_up_other_ledger_writers(make_version, monkeypatch):
    """SQLite: the promotion's reads took the database write lock (BEGIN IMMEDIATE) and kept it
    through its MLflow call, so every other writer — another model's deploy rows — waited on it."""
    model = os.environ["MLOPS_MODEL_NAME"]
    v1 = make_version(validation_status="passed")
    assert another_models_row_while_promoting(monkeypatch, "get_version", model, v1) == "written"
    assert versions.production_version(model) == v1


def another_models_row_while_promoting(monkeypatch, mlflow_call: str, model: str, version: int) -> str:
    """Promote ``version`` while ``versions.<mlflow_call>`` is held (an MLflow call that has not
    answered yet); whether another model's ledger row was written meanwhile (SQLite: a move
    holding the write lock through that call makes it wait)."""
    import threading

    real = getattr(versions, mlflow_call)
    asked, release = threading.Event(), threading.Event()

    def held_mlflow(*a, **k):
        asked.set()
        release.wait(120)
        return real(*a, **k)

    monkeypatch.setattr(versions, mlflow_call, held_mlflow)
    p = threading.Thread(target=lambda: promotion.promote(model, version, actor="alice"))
    p.start()
    try:
        assert asked.wait(60)
        return another_models_row_is_written_while_held(release)
    finally:
        release.set()
        p.join(timeout=120)
        assert not p.is_alive()


def another_models_row_is_written_while_held(release, within: float = 30.0) -> str:
    """Append another model's deploy row while an MLflow call is held (``release`` not set yet),
    then release it. "written" when the row went in before the release; else what happened. An
    ordering, not a stopwatch: a loaded machine makes it slower, never wrong (the 30 s bound is
    only there so a writer that waits on the held call fails the test instead of hanging it)."""
    import threading

    from registry.ledger import Entry

    outcome: list[str] = []

    def write():
        try:
            Ledger().append(Entry(action="deploy", model="another-model", outcome="ok", to_version=7, host="web-1"))
            outcome.append("written" if not release.is_set() else "written only after the MLflow call returned")
        except Exception as exc:  # noqa: BLE001 - reported to the test
            outcome.append(f"refused: {exc!r}")

    w = threading.Thread(target=write, daemon=True)
    w.start()
    w.join(within)
    release.set()
    w.join(120)
    return outcome[0] if outcome else "still waiting"


# --- found by review (2026-12-03, late) ------------------------------------------------------
def test_a_killed_move_confirmed_by_the_next_one_keeps_its_details_and_shows_its_mover(make_version, tmp_path):
    """The intent row kept only the kind of move: a forced promotion confirmed by reconciliation
    became an ordinary one in the ledger; and a move confirmed inside the next promotion left the
    version's tag naming its earlier promoter."""
    model, v1, v2 = two_promoted_once(make_version)
    v3 = make_version(validation_status="passed")
    promotion.promote(model, v2, actor="erin")
    promotion.promote(model, v1, actor="frank")                      # v2's tag: erin
    held_promotion(v2, "promotion:after_alias", tmp_path / "marker", "--force", "--reason", "hotfix")
    promotion.promote(model, v3, actor="dave")                       # confirms carol's move first
    confirmed = [e for e in Ledger().entries(model) if e.action == "promote" and e.to_version == v2][-1]
    assert confirmed.actor == "carol" and "intent" in confirmed.details
    assert confirmed.details.get("forced") is True, confirmed.details
    assert versions.get_version(model, v2).tags["approved_by"] == "carol"
    assert versions.get_version(model, v3).tags["approved_by"] == "dave"


def test_a_refused_rollback_still_records_the_move_it_found(make_version):
    """A rollback found production moved outside mlops, logged that it recorded it, then found no
    target: the recorded rows were rolled back with the refusal."""
    from mlops_common.errors import RefusedError
    from registry.promotion_rules import ledger_production

    model, v1, v2 = two_promoted_once(make_version)
    versions.set_alias(model, versions.PRODUCTION, v2)               # the MLflow UI
    with pytest.raises(RefusedError):
        promotion.rollback(model, to=v2, actor="ops")                 # --to where production already is
    assert ledger_production(Ledger().entries(model)) == v2
    assert status(model)["agrees"]


def test_status_is_not_fooled_by_a_promotion_between_its_two_reads(make_version, monkeypatch):
    """``registry status`` read the alias, then the ledger: a promotion committing in between was
    reported as a move made outside mlops."""
    model, v1, v2 = two_promoted_once(make_version)
    real = Ledger.entries

    def after_a_concurrent_promotion(self, *a, **k):
        monkeypatch.setattr(Ledger, "entries", real)
        promotion.promote(model, v2, actor="bob")                    # another process, between the reads
        return real(self, *a, **k)

    monkeypatch.setattr(Ledger, "entries", after_a_concurrent_promotion)
    found = reconciliation.check_agreement(model)
    assert found.problem() is None and found.alias == found.ledger == v2


def test_ctrl_c_once_mlflow_moved_the_alias_records_the_move_and_still_stops(make_version, monkeypatch):
    """A Ctrl-C (or SIGTERM, turned into one) arriving while MLflow applied the move was taken for
    a lost answer: the move was recorded and the interrupt swallowed, so the command went on
    (`mlops sync rollback` into its deploy) as if nobody had pressed Ctrl-C. The move is recorded,
    then the interrupt ends the command."""
    model, v1, v2 = two_promoted_once(make_version)
    point = alias_move._point

    def moved_then_interrupted(m, v):
        point(m, v)
        raise KeyboardInterrupt

    monkeypatch.setattr(alias_move, "_point", moved_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        promotion.promote(model, v2, actor="alice")
    assert versions.production_version(model) == v2
    assert rows(model)[-2:] == [("intent", "pending", v1, v2), ("promote", "ok", v1, v2)]
    intent, move = Ledger().entries(model)[-2:]
    assert move.details["intent"] == intent.id
    monkeypatch.setattr(alias_move, "_point", point)
    assert status(model) == {"alias": v2, "ledger": v2, "agrees": True, "open_intents": [], "problem": None}


def test_a_promotion_asking_mlflow_whether_the_ledgers_production_exists_does_not_hold_up_other_writers(
        make_version, monkeypatch):
    """The same, on the reconcile at the start of a move when the `production` alias is gone: its
    read of the ledger took SQLite's write lock and kept it while MLflow was asked whether the
    version the ledger names still exists (up to the request timeout and its retries; other
    writers give up after the busy timeout)."""
    model = os.environ["MLOPS_MODEL_NAME"]
    v1 = make_version(validation_status="passed")
    promotion.promote(model, v1, actor="alice")
    versions.delete_alias(model, versions.PRODUCTION)             # removed in the MLflow UI
    assert another_models_row_while_promoting(monkeypatch, "version_exists", model, v1) == "written"
    assert versions.production_version(model) == v1
    assert rows(model)[-3:] == [("rollback", "ok", v1, None), ("intent", "pending", None, v1),
                                ("promote", "ok", None, v1)]


def test_a_promotion_stopped_by_sigterm_says_interrupted_and_exits_130_as_ctrl_c(make_version, tmp_path):
    """Found by a signals review (2026-12-06): `registry promote` had no SIGTERM handler, so a
    cancelled CircleCI job killed it at once (exit 143, no line) and the path for an interrupt
    while MLflow applies the move (the move recorded, then stop) was Ctrl-C's only, though
    docs/architecture.md promised it for SIGTERM too. Held with its intent committed, then SIGTERM:
    one line, exit 130, production not moved, and the next move goes ahead."""
    from tests.helpers import sigterm_when_held

    model, v1, v2 = two_promoted_once(make_version)
    marker = tmp_path / "marker"
    env = {**os.environ, "MLOPS_TEST_PAUSE_AT": "promotion:after_intent", "MLOPS_TEST_PAUSE_MARKER": str(marker)}
    proc = subprocess.Popen([sys.executable, "-m", "mlops", "registry", "promote", "--version", str(v2),
                             "--actor", "carol"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    err = sigterm_when_held(proc, marker, timeout=120)
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "interrupted", err[-2000:]
    assert "Traceback" not in err
    assert versions.production_version(model) == v1
    assert rows(model)[-1] == ("intent", "pending", v1, v2)          # as after a kill: reconciled next
    r = run_mlops("registry", "promote", "--version", str(v2), "--actor", "dave")
    assert r.returncode == 0, r.stderr
    assert versions.production_version(model) == v2 and status(model)["agrees"]
