"""The registry flow, through the real CLI, on every MLflow backend: one suite, two backends.

``sqlite-local`` is the embedded default (SQLite, local artifacts, SQLite ledger);
``postgres-s3`` is the production shape (``mlflow server --workers 2`` on PostgreSQL with
artifacts in S3, the ledger in the same PostgreSQL database). The tests do not know which one
they run on, except where they check that the data really lives where the backend says.
"""
from __future__ import annotations

import json
import threading

import pytest

from registry import versions
from registry.ledger import Ledger
from tests.helpers import run_mlops

pytestmark = pytest.mark.slow

EPOCHS = "3"          # enough for the digits CNN to pass the 0.80 gate (about 0.9)
RACE_ROUNDS = 4       # per racer; every call is a whole `mlops registry promote` process


def ok(r) -> dict | list:
    """The JSON document of a successful CLI call (the call's stderr on failure)."""
    assert r.returncode == 0, f"exit {r.returncode}:\n{r.stderr[-4000:]}"
    assert "Traceback" not in r.stderr, r.stderr[-4000:]
    return json.loads(r.stdout)


def ledger_rows(backend) -> list[tuple]:
    return [(e.action, e.from_version, e.to_version, e.outcome)
            for e in Ledger(backend.ledger_url).entries(backend.model)]


def assert_data_lives_in_the_backend(backend, run_ids: list[str]) -> None:
    """postgres-s3: versions, runs and ledger rows in PostgreSQL, artifacts in the S3 bucket."""
    pg_s3 = backend.postgres_s3
    if pg_s3 is None:
        assert backend.ledger_url.startswith("sqlite:///") and (backend.home / "ledger.db").is_file()
        return
    for run_id in run_ids:
        keys = pg_s3.artifact_keys(run_id)
        for suffix in ("/tfserving/saved_model.pb", "/golden/request.json", "/golden/response.json",
                       "/golden/signature.json"):
            assert any(k.endswith(suffix) for k in keys), (suffix, keys)
    conn = pg_s3.pg.connect(pg_s3.database)
    try:
        cur = conn.cursor()
        cur.execute("select count(*) from model_versions where name = %s", (backend.model,))
        assert cur.fetchone()[0] == 2
        cur.execute("select run_uuid from runs where run_uuid = any(%s)", (run_ids,))
        assert sorted(r[0] for r in cur.fetchall()) == sorted(run_ids)
        cur.execute("select count(*) from ledger_entries where model = %s", (backend.model,))
        assert cur.fetchone()[0] == len(Ledger(backend.ledger_url).entries(backend.model))
        cur.execute("select version_num from ledger_alembic_version")
        assert cur.fetchall() == [("0001",)]
    finally:
        conn.close()


def test_train_gate_promote_retrain_rollback_history(mlflow_backend, digits_batches):
    b = mlflow_backend
    outputs: list[str] = []

    def cli(*args: str):
        r = run_mlops(*args, env=b.env)
        outputs.extend((r.stdout, r.stderr))
        return r

    # train v1 (a real CNN, logged and registered through the CLI)
    t1 = ok(cli("train", "--epochs", EPOCHS, "--json"))
    assert (t1["version"], t1["model_name"]) == (1, b.model)
    # the gate re-evaluates it (loading the model back from the artifact store): no production yet
    g1 = ok(cli("registry", "gate", "--version", "1", "--json"))
    assert (g1["status"], g1["production_version"]) == ("passed", None)
    p1 = ok(cli("registry", "promote", "--version", "1", "--actor", "alice", "--reason", "first", "--json"))
    assert (p1["from_version"], p1["to_version"], p1["actor"]) == (None, 1, "alice")

    # retrain from production (v1's weights, downloaded from the artifact store) on a good batch
    t2 = ok(cli("retrain", "--incoming", str(digits_batches.good), "--epochs", EPOCHS, "--json"))
    assert (t2["version"], t2["retrained_from"]) == (2, "1")
    g2 = ok(cli("registry", "gate", "--version", "2", "--json"))
    assert (g2["status"], g2["production_version"]) == ("passed", 1), g2["checks"]
    assert g2["metrics"]["production"]["accuracy"] == pytest.approx(t1["metrics"]["heldout_accuracy"], abs=1e-6)
    ok(cli("registry", "promote", "--version", "2", "--actor", "alice", "--json"))
    assert versions.production_version(b.model) == 2

    # roll back: production goes back to v1, read from the ledger
    rb = ok(cli("registry", "rollback", "--reason", "rehearsal", "--actor", "bob", "--json"))
    assert (rb["action"], rb["from_version"], rb["to_version"]) == ("rollback", 2, 1)
    status = ok(cli("registry", "status", "--json"))
    prod = [row for row in status["versions"] if "production" in row["aliases"]]
    assert [row["version"] for row in prod] == [1]

    # history: every step, in order, from the ledger of this backend
    hist = ok(cli("registry", "history", "--model", b.model, "--json"))
    # (every move of production is announced by an intent row before the alias moves)
    assert [(h["action"], h["from_version"], h["to_version"], h["outcome"]) for h in hist] == [
        ("register", None, 1, "ok"), ("gate", None, 1, "passed"),
        ("intent", None, 1, "pending"), ("promote", None, 1, "ok"),
        ("register", None, 2, "ok"), ("gate", 1, 2, "passed"),
        ("intent", 1, 2, "pending"), ("promote", 1, 2, "ok"),
        ("intent", 2, 1, "pending"), ("rollback", 2, 1, "ok")]
    assert [h["actor"] for h in hist if h["action"] in ("promote", "rollback")] == ["alice", "alice", "bob"]
    assert ledger_rows(b) == [(h["action"], h["from_version"], h["to_version"], h["outcome"]) for h in hist]

    assert_data_lives_in_the_backend(b, [t1["run_id"], t2["run_id"]])
    # the ledger URL may hold a database password: it never reaches the output
    password = b.ledger_url.split("@")[0].rsplit(":", 1)[-1] if "@" in b.ledger_url else None
    if password:
        assert not any(password in text for text in outputs)


def test_racing_cli_promotions_are_serialized(mlflow_backend, make_version):
    """Two people promote at once, each `mlops registry promote` a separate process with its own
    database connection: no ledger row lost, each row continues the previous one, and the alias
    ends where the last row says."""
    b = mlflow_backend
    v1 = make_version(validation_status="passed")
    v2 = make_version(validation_status="passed")
    results: dict[str, list] = {"racer-1": [], "racer-2": []}

    def racer(version: int, actor: str) -> None:
        for i in range(RACE_ROUNDS):
            results[actor].append(run_mlops("registry", "promote", "--version", str(version), "--actor", actor,
                                            "--reason", f"round {i}", "--json", env=b.env, timeout=300))

    threads = [threading.Thread(target=racer, args=(v, actor)) for v, actor in ((v1, "racer-1"), (v2, "racer-2"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=900)
        assert not t.is_alive(), "a racer did not finish"
    for actor, runs in results.items():
        assert len(runs) == RACE_ROUNDS
        for r in runs:
            ok(r)

    rows = [e for e in Ledger(b.ledger_url).entries(b.model) if e.action == "promote"]
    assert len(rows) == 2 * RACE_ROUNDS                     # nothing lost
    for actor in results:
        assert sorted(e.reason for e in rows if e.actor == actor) == [f"round {i}" for i in range(RACE_ROUNDS)]
    assert all(e.outcome == "ok" for e in rows)
    assert rows[0].from_version is None                      # serialized: each continues the last
    for prev, row in zip(rows, rows[1:]):
        assert row.from_version == prev.to_version, (prev, row)
    assert any(prev.to_version != row.to_version for prev, row in zip(rows, rows[1:])), \
        "the racers never interleaved; the test proved nothing"
    assert versions.production_version(b.model) == rows[-1].to_version


def test_a_retrain_of_a_batch_with_long_names_starts_its_run(mlflow_backend, digits_batches, tmp_path):
    """MLflow keeps a run's name in VARCHAR(250): on PostgreSQL a retrain of a batch whose file and
    folder names are long (the run is named after both) failed before training with "value too
    long for type character varying(250)" and the SQL statement (SQLite does not check). Now the
    name is cut to fit; the `incoming` param and the `mlops.incoming` tag keep the whole path."""
    from tests.helpers import mlflow_client

    folder = tmp_path / ("f" * 200)
    folder.mkdir()
    batch = folder / ("b" * 200 + ".npz")
    batch.write_bytes(digits_batches.good.read_bytes())
    res = ok(run_mlops("retrain", "--incoming", str(batch), "--epochs", "1", "--json", env=mlflow_backend.env))
    run = mlflow_client(mlflow_backend.tracking_uri).get_run(res["run_id"])
    assert len(run.info.run_name) == 250 and run.info.run_name.startswith("retrain from scratch + bbbb")
    assert run.info.run_name.endswith("ffff)")
    assert run.data.params["incoming"] == run.data.tags["mlops.incoming"] == str(batch)
    assert res["version"] == 1 and res["retrained_from"] == "scratch"
