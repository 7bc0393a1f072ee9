"""Bad input through the real command line: one clear line, a non-zero exit, nothing changed.

One shared world for the module (built once): a real MLflow server with this module's model
(v1 promoted and deployed, v2 registered and gate-passed) and another model with three versions;
two serving hosts with a real local TF-Serving-compatible server each, one ``file://`` and one
``ssh://`` (real OpenSSH sshd, pinned host key); the ledger in ``$MLOPS_HOME``.

Each case runs ``mlops ...`` in a subprocess with one thing wrong and checks: exit code != 0;
stderr is exactly one line, starting with ``error:``, naming what to fix (no traceback, no
progress); and nothing changed: aliases and tags of every version of both models, the ledger
rows, and every file under both hosts' base directories (``models.config`` included) are
byte-identical to before.
"""
from __future__ import annotations

import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from mlops.ports import free_port
from tests.fixtures.faults import final_error_line, one_error_line, registry_snapshot, tree_bytes
from tests.helpers import run_mlops
from tests.lab.deploy_env import DeployEnv
from tests.lab.sshd import keygen


@dataclass
class World:
    env: DeployEnv
    other: str                      # another registered model (versions 1..3)
    file_host: object
    ssh_host: object
    v1: int
    v2: int
    tmp: Path

    @property
    def model(self) -> str:
        return self.env.model

    def snapshot(self):
        from registry.ledger import Ledger

        return (registry_snapshot(self.model), registry_snapshot(self.other),
                [(e.id, e.action, e.outcome, e.from_version, e.to_version) for e in Ledger().entries()],
                tree_bytes(self.file_host.base), tree_bytes(self.ssh_host.base))

    def hosts_file(self, text: str) -> str:
        path = self.tmp / f"hosts-{uuid.uuid4().hex[:6]}.toml"
        path.write_text(text)
        return str(path)

    def host_entry(self, host, **changes) -> str:
        entry = {**host.entry, **changes}
        return "[[hosts]]\n" + "".join(f'{k} = "{v}"\n' for k, v in entry.items() if v is not None)


@pytest.fixture(scope="module")
def world(mlflow_server, deploy_bundles, serving_pool, sshd_factory, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("bad-input-home")
    name = f"bad-input-{uuid.uuid4().hex[:8]}"
    env = {"MLFLOW_TRACKING_URI": mlflow_server, "MLOPS_HOME": str(home), "MLOPS_MODEL_NAME": name}
    for k, v in env.items():
        mp.setenv(k, v)
    for k in ("MLOPS_LEDGER_URL", "MLOPS_HOSTS_FILE", "MLOPS_SYNC_TARGET", "MLOPS_SYNC_REST_URL",
              "MLOPS_WEBHOOK_SECRET", "CIRCLE_TOKEN", "CIRCLE_WORKFLOW_ID", "CIRCLE_PIPELINE_ID"):
        mp.delenv(k, raising=False)
    tmp = tmp_path_factory.mktemp("bad-input")
    denv = DeployEnv(dict(env), deploy_bundles, tmp, None, sshd_factory, None, serving_pool)
    try:
        file_host, ssh_host = denv.add_host("file"), denv.add_host("ssh")
        v1 = denv.register("a")
        denv.promote(v1)
        assert denv.deploy().status == "deployed"
        v2 = denv.register("b")
        other = DeployEnv({**env, "MLOPS_MODEL_NAME": f"{name}-other"}, deploy_bundles, tmp, None)
        for kind in ("a", "b", "c"):
            other.register(kind)
        from registry import versions

        versions.set_tags(other.model, 3, {"pipeline_id": "pipe-of-the-other-model"})
        yield World(denv, other.model, file_host, ssh_host, v1, v2, tmp)
    finally:
        denv.close()
        mp.undo()


@contextmanager
def host_models_config(world, data: bytes):
    """The file host's models.config replaced by ``data`` for the duration of the case."""
    path = world.file_host.base / "models.config"
    good = path.read_bytes()
    path.write_bytes(data)
    try:
        yield
    finally:
        path.write_bytes(good)


def good_batch(world) -> str:
    path = world.tmp / "good-batch.npz"
    rng = np.random.default_rng(7)
    np.savez(path, images=rng.random((4, 8, 8, 1), dtype=np.float32), labels=np.array([0, 1, 2, 3]))
    return str(path)


def bad_batch(world) -> str:
    path = world.tmp / "labels-out-of-range.npz"
    np.savez(path, images=np.zeros((4, 8, 8, 1), np.float32), labels=np.array([0, 1, 2, 42]))
    return str(path)


def corrupt_batch(world) -> str:
    """A compressed batch whose zip structure is intact but whose deflate stream is damaged."""
    path = world.tmp / f"deflate-damaged-{uuid.uuid4().hex[:4]}.npz"
    rng = np.random.default_rng(0)
    np.savez_compressed(path, images=rng.random((64, 8, 8, 1), np.float32), labels=np.arange(64) % 10)
    raw = bytearray(path.read_bytes())
    start = raw.index(b"images.npy") + 100           # inside the compressed bytes of images.npy (zlib.error)
    raw[start:start + 64] = bytes(64)
    path.write_bytes(bytes(raw))
    return str(path)


def a_file(world) -> str:
    path = world.tmp / f"a-file-{uuid.uuid4().hex[:4]}"
    path.write_text("not a directory")
    return str(path)


def a_directory(world) -> str:
    path = world.tmp / f"a-dir-{uuid.uuid4().hex[:4]}"
    path.mkdir()
    return str(path)


def other_key(world) -> str:
    key = world.tmp / f"not-the-deploy-key-{uuid.uuid4().hex[:4]}"
    keygen(key)
    return str(key)


def changed_host_key(world) -> str:
    impostor = world.tmp / f"impostor-{uuid.uuid4().hex[:4]}"
    keygen(impostor)
    line = world.env._sshd().known_hosts_line(Path(str(impostor) + ".pub").read_text())
    known = world.tmp / f"known-changed-{uuid.uuid4().hex[:4]}"
    known.write_text(line + "\n")
    return str(known)


def empty_known_hosts(world) -> str:
    known = world.tmp / f"known-empty-{uuid.uuid4().hex[:4]}"
    known.write_text("")
    return str(known)


# id -> (build(world) -> (args, env), fragments the one error line must contain, optional context)
CASES = {
    # --- names and versions ------------------------------------------------------------------
    "unknown model (deploy)": (lambda w: (["sync", "deploy", "--model-name", "no-such-model"], {}),
                               ["registered model 'no-such-model' does not exist"]),
    "unknown model (promote)": (lambda w: (["registry", "promote", "--version", "1", "--model-name", "nope"], {}),
                                ["registered model 'nope' does not exist"]),
    "unknown version (deploy)": (lambda w: (["sync", "deploy", "--version", "99"], {}),
                                 ["version 99", "does not exist"]),
    "unknown version (promote)": (lambda w: (["registry", "promote", "--version", "99"], {}),
                                  ["version 99 of registered model", "does not exist"]),
    "unknown version (rollback --to)": (lambda w: (["sync", "rollback", "--to", "99"], {}),
                                        ["version 99", "does not exist"]),
    "a version of another model (deploy)": (lambda w: (["sync", "deploy", "--version", "3"], {}),
                                            ["version 3", "does not exist"]),
    "a pipeline of another model (promote)": (
        lambda w: (["registry", "promote", "--pipeline-id", "pipe-of-the-other-model"], {}),
        ["not a version of"]),
    "traversal in the model name (deploy)": (lambda w: (["sync", "deploy", "--model-name", "../evil"], {}),
                                             ["'../evil'"]),
    "traversal in the model name (train)": (lambda w: (["train", "--model-name", "../../evil", "--epochs", "1"], {}),
                                            ["model name", "'../../evil' is not allowed"]),
    "traversal in a hosts file target": (
        lambda w: (["sync", "deploy", "--hosts", w.hosts_file(w.host_entry(
            w.file_host, target=f"file://{w.file_host.base}/../../etc"))], {}),
        ["field 'target'", "must not contain '..'"]),
    "traversal in identity_file": (
        lambda w: (["sync", "deploy", "--hosts", w.hosts_file(w.host_entry(
            w.ssh_host, identity_file="../../root/.ssh/id_ed25519"))], {}),
        ["field 'identity_file'", "must not contain '..'"]),
    "traversal in MLOPS_SYNC_TARGET": (
        lambda w: (["sync", "deploy"], {"MLOPS_SYNC_TARGET": "file:///srv/models/../../etc",
                                        "MLOPS_SYNC_REST_URL": w.file_host.rest_url}),
        ["MLOPS_SYNC_", "must not contain '..'"]),
    # --- the hosts file -------------------------------------------------------------------------
    "hosts file is not TOML": (lambda w: (["sync", "deploy", "--hosts", w.hosts_file("[[hosts]\nname = ")], {}),
                               ["not valid TOML"]),
    "hosts file without rest_url": (
        lambda w: (["sync", "deploy", "--hosts", w.hosts_file(w.host_entry(w.file_host, rest_url=None))], {}),
        ["field 'rest_url'", "missing"]),
    "hosts file with an unknown field": (
        lambda w: (["sync", "plan", "--hosts", w.hosts_file(w.host_entry(w.file_host, pasword="x"))], {}),
        ["field 'pasword'", "unknown field"]),
    "hosts file with an unknown scheme": (
        lambda w: (["sync", "deploy", "--hosts", w.hosts_file(w.host_entry(w.file_host, target="ftp://h/x"))], {}),
        ["unsupported scheme 'ftp'"]),
    "hosts file that does not exist": (lambda w: (["sync", "deploy", "--hosts", str(w.tmp / "nope.toml")], {}),
                                       ["nope.toml does not exist"]),
    # --- what is found on a host --------------------------------------------------------------
    "malformed models.config on the host": (
        lambda w: (["sync", "deploy", "--version", str(w.v2)], {}),
        ["models.config"], lambda w: host_models_config(w, b"model_config_list { config { name: ")),
    "models.config that is not text": (
        lambda w: (["sync", "deploy", "--version", str(w.v2)], {}),
        ["models.config is not UTF-8 text"], lambda w: host_models_config(w, b"\xff\xfe\x00garbage")),
    # --- the environment --------------------------------------------------------------------------
    "MLOPS_SYNC_TARGET without MLOPS_SYNC_REST_URL": (
        lambda w: (["sync", "deploy"], {"MLOPS_SYNC_TARGET": f"file://{w.file_host.base}"}),
        ["MLOPS_SYNC_REST_URL is not"]),
    "both MLOPS_HOSTS_FILE and MLOPS_SYNC_TARGET": (
        lambda w: (["sync", "deploy"], {"MLOPS_SYNC_TARGET": f"file://{w.file_host.base}",
                                        "MLOPS_SYNC_REST_URL": w.file_host.rest_url,
                                        "MLOPS_HOSTS_FILE": str(w.env.hosts_file)}),
        ["both MLOPS_HOSTS_FILE and MLOPS_SYNC_TARGET are set"]),
    "webhook without MLOPS_WEBHOOK_SECRET": (
        lambda w: (["registry", "webhook", "create", "--url", "http://127.0.0.1:9/hook"], {}),
        ["MLOPS_WEBHOOK_SECRET is not set"]),
    "watch receiver without MLOPS_WEBHOOK_SECRET": (
        lambda w: (["sync", "watch", "--once", "--webhook-port", "0"], {}),
        ["--webhook-port needs MLOPS_WEBHOOK_SECRET"]),
    # --- hosts that cannot be reached or trusted -----------------------------------------------------
    "unreachable SSH host": (
        lambda w: (["sync", "deploy", "--version", str(w.v2), "--hosts", w.hosts_file(w.host_entry(
            w.ssh_host, target=f"ssh://{w.env._sshd().user}@127.0.0.1:{free_port()}{w.ssh_host.base}"))], {}),
        ["connection refused"]),
    "unreachable TF Serving": (
        lambda w: (["sync", "deploy", "--version", str(w.v2), "--hosts", w.hosts_file(w.host_entry(
            w.file_host, rest_url=f"http://127.0.0.1:{free_port()}"))], {}),
        ["TF Serving REST", "is not reachable"]),
    "wrong SSH key": (
        lambda w: (["sync", "deploy", "--version", str(w.v2), "--hosts", w.hosts_file(w.host_entry(
            w.ssh_host, identity_file=other_key(w)))], {}),
        ["authorized_keys"]),
    "changed SSH host key": (
        lambda w: (["sync", "deploy", "--version", str(w.v2), "--hosts", w.hosts_file(w.host_entry(
            w.ssh_host, known_hosts=changed_host_key(w)))], {}),
        ["HOST KEY CHANGED"]),
    "unknown SSH host key": (
        lambda w: (["sync", "deploy", "--version", str(w.v2), "--hosts", w.hosts_file(w.host_entry(
            w.ssh_host, known_hosts=empty_known_hosts(w)))], {}),
        ["ssh-keyscan -p"]),
    # --- data -----------------------------------------------------------------------------------------
    "malformed data batch": (lambda w: (["data", "validate", bad_batch(w)], {}),
                             ["labels-out-of-range.npz"]),
    "corrupt data batch (damaged deflate stream)": (lambda w: (["data", "validate", corrupt_batch(w)], {}),
                                                    ["deflate-damaged", "cannot read it as a .npz batch"]),
    "make-batch --out below a file": (
        lambda w: (["data", "make-batch", "--kind", "good", "--out", a_file(w) + "/batch.npz"], {}),
        ["--out", "cannot write there"]),
    "--learning-rate inf (train)": (lambda w: (["train", "--learning-rate", "inf", "--epochs", "1"], {}),
                                    ["argument --learning-rate: 'inf' is not a finite number"]),
    "--learning-rate -0.1 (train)": (lambda w: (["train", "--learning-rate", "-0.1", "--epochs", "1"], {}),
                                     ["--learning-rate must be a positive number"]),
    # --- where reports go: refused before the gate records its verdict --------------------------------
    "--junit that is a directory (gate)": (
        lambda w: (["registry", "gate", "--version", str(w.v2), "--junit", a_directory(w)], {}),
        ["--junit", "is a directory"]),
    "--report-dir that is a file (gate)": (
        lambda w: (["registry", "gate", "--version", str(w.v2), "--report-dir", a_file(w)], {}),
        ["--report-dir", "is a file, not a directory"]),
    "--junit that is a directory (smoke)": (
        lambda w: (["sync", "smoke", "--junit", a_directory(w)], {}), ["--junit", "is a directory"]),
    # found by a bad-input sweep (2026-12-04): a folder that cannot be written passed the check; the
    # gate then evaluated, recorded its verdict (tag, ledger row, alias) and failed on the report
    "--junit in a folder that cannot be written (gate)": (
        lambda w: (["registry", "gate", "--version", str(w.v2), "--junit", "/proc/mlops-no-such/gate.xml"], {}),
        ["--junit /proc/mlops-no-such/gate.xml", "cannot write in /proc/mlops-no-such"]),
    "--report-dir that cannot be written (gate)": (
        lambda w: (["registry", "gate", "--version", str(w.v2), "--report-dir", "/proc/mlops-no-such/r"], {}),
        ["--report-dir /proc/mlops-no-such/r", "cannot write in"]),
    "--junit in a folder that cannot be written (smoke)": (
        lambda w: (["sync", "smoke", "--junit", "/proc/mlops-no-such/smoke.xml"], {}), ["--junit", "cannot write in"]),
    # --- settings that are not URLs --------------------------------------------------------------------
    "MLOPS_LEDGER_URL with a port that is not a number": (
        lambda w: (["registry", "history"], {"MLOPS_LEDGER_URL": "postgresql://u:pw@127.0.0.1:notaport/db"}),
        ["MLOPS_LEDGER_URL is not a valid SQLAlchemy URL"]),
    # found by a bad-input sweep (2026-12-04): the alias moved, its ledger rows vanished with the process
    "MLOPS_LEDGER_URL in memory (rollback)": (
        lambda w: (["registry", "rollback", "--reason", "x"], {"MLOPS_LEDGER_URL": "sqlite://"}),
        ["MLOPS_LEDGER_URL names an in-memory SQLite database"]),
    "MLOPS_LEDGER_URL with a relative SQLite path (history)": (
        lambda w: (["registry", "history"], {"MLOPS_LEDGER_URL": "sqlite:///mlops-typo-dir/ledger.db"}),
        ["MLOPS_LEDGER_URL names a relative SQLite path ('mlops-typo-dir/ledger.db'", "sqlite:////abs"]),
    "MLOPS_LEDGER_URL naming a driver that is not installed": (
        lambda w: (["registry", "history"], {"MLOPS_LEDGER_URL": "postgresql+nodriver://u@127.0.0.1/db"}),
        ["MLOPS_LEDGER_URL names the driver 'postgresql+nodriver'"]),
    "CIRCLECI_API_URL that is not a URL": (
        lambda w: (["registry", "reconcile"], {"CIRCLE_TOKEN": "x", "CIRCLE_WORKFLOW_ID": "abc",
                                               "CIRCLECI_API_URL": "nonsense"}),
        ["CIRCLECI_API_URL is not a usable URL"]),
    # --- MLflow -----------------------------------------------------------------------------------------
    "tracking URI that is not http": (lambda w: (["sync", "deploy"], {"MLFLOW_TRACKING_URI": "file:///tmp/mlruns"}),
                                      ["MLFLOW_TRACKING_URI must be the http(s) URL"]),
    "tracking URI with a trailing space (said only InvalidURL)": (
        lambda w: (["registry", "status"], {"MLFLOW_TRACKING_URI": w.env.env["MLFLOW_TRACKING_URI"] + " "}),
        ["MLFLOW_TRACKING_URI starts or ends with a space or a line break"]),
    "tracking URI where nothing listens": (
        lambda w: (["registry", "status"], {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}),
        ["cannot reach the MLflow server"]),
    "tracking URI of a server that is not MLflow": (
        lambda w: (["sync", "deploy"], {"MLFLOW_TRACKING_URI": w.file_host.rest_url}),
        ["does not look like an MLflow tracking server"]),
    # --- found by review (2026-12-03): tracebacks, silently accepted values, echoed passwords -------------
    "a usage mistake (argparse)": (lambda w: (["sync", "deploy", "--timeout", "-1"], {}),
                                   ["--timeout", "usage: `mlops sync deploy --help`"]),
    "--max-latency-ratio nan (switched the latency check off)": (
        lambda w: (["sync", "plan", "--max-latency-ratio", "nan"], {}), ["'nan' is not a finite number"]),
    "MLOPS_BAKE_MAX_LATENCY_RATIO=inf": (
        lambda w: (["sync", "plan"], {"MLOPS_BAKE_MAX_LATENCY_RATIO": "inf"}),
        ["MLOPS_BAKE_MAX_LATENCY_RATIO='inf'", "not a finite number"]),
    "mlops up --port 99999 (a traceback)": (lambda w: (["up", "--port", "99999"], {}),
                                            ["a port is 1 to 65535"]),
    "MLOPS_MLFLOW_PORT that is not a number (a traceback)": (
        lambda w: (["registry", "status"], {"MLFLOW_TRACKING_URI": "", "MLOPS_MLFLOW_PORT": "abc"}),
        ["MLOPS_MLFLOW_PORT must be a port number 1-65535, got 'abc'"]),
    "MLOPS_LEDGER_URL below a file (a traceback)": (
        lambda w: (["registry", "history"], {"MLOPS_LEDGER_URL": f"sqlite:///{a_file(w)}/ledger.db"}),
        ["cannot create the folder", "MLOPS_LEDGER_URL"]),
    "make-batch --repeats 100000000 (10 TiB, a traceback)": (
        lambda w: (["data", "make-batch", "--kind", "bad", "--out", str(w.tmp / "b.npz"), "--repeats", "100000000"],
                   {}), ["--repeats is at most 100"]),
    "make-batch --kind good --repeats 5 (ignored)": (
        lambda w: (["data", "make-batch", "--kind", "good", "--out", str(w.tmp / "g.npz"), "--repeats", "5"], {}),
        ["--repeats applies to --kind bad only"]),
    "a version number past 64 bits (15 s of retries, blamed the server)": (
        lambda w: (["registry", "gate", "--version", "99999999999999999999"], {}),
        ["larger than any version number"]),
    "gate on a version without a loadable model (named a deleted temporary folder)": (
        lambda w: (["registry", "gate", "--version", str(w.v2)], {}),
        ["cannot be loaded as an MLflow TensorFlow model", "register a new version"]),
    # found by a sweep (2026-12-04): a production model that does not load was a traceback in retrain
    "retrain from a production version without a loadable model": (
        lambda w: (["retrain", "--incoming", good_batch(w), "--epochs", "1"], {}),
        ["cannot be loaded as an MLflow TensorFlow model", "retrain with --from-scratch"]),
    "webhook URL with a password (stored in MLflow, printed)": (
        lambda w: (["registry", "webhook", "create", "--url", "http://deploy:hunter2SECRET@127.0.0.1:9/hook"],
                   {"MLOPS_WEBHOOK_SECRET": "s" * 24}),
        ["--url must not hold a user name or password"]),
    "webhook URL of another scheme with a password": (
        lambda w: (["registry", "webhook", "create", "--url", "ftp://deploy:hunter2SECRET@127.0.0.1/hook"],
                   {"MLOPS_WEBHOOK_SECRET": "s" * 24}),
        ["--url must be an http(s) URL", "deploy:***@"]),
}


# commands whose stdout is their report (here: FAIL and the file), still with one error line
REPORTS_ON_STDOUT = {"malformed data batch", "corrupt data batch (damaged deflate stream)"}
# commands that said what they were doing first (progress lines), then their one error line, last
PROGRESS_FIRST = {"gate on a version without a loadable model (named a deleted temporary folder)",
                  "retrain from a production version without a loadable model"}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clear_line_a_nonzero_exit_and_changes_nothing(world, case):
    build, fragments, *context = CASES[case]
    untouched = world.snapshot()
    ctx = context[0](world) if context else contextmanager(lambda: (yield))()
    with ctx:                                   # e.g. a malformed models.config put on the host
        args, env = build(world)
        # without a context nothing is put on the host: the world before the command is the one
        # taken above (build only writes its files under world.tmp, which no snapshot reads)
        before = world.snapshot() if context else untouched
        r = run_mlops(*args, env=env, timeout=180)
        after = world.snapshot()
    line = final_error_line(r.stderr) if case in PROGRESS_FIRST else one_error_line(r.stderr)
    assert r.returncode != 0, (r.returncode, line)
    missing = [f for f in fragments if f not in line]
    assert not missing, f"{case}: {missing} not in: {line}"
    assert "hunter2SECRET" not in r.stderr + r.stdout
    assert r.stdout == "" or case in REPORTS_ON_STDOUT, r.stdout
    print(f"{case}: {line}")
    assert after == before, f"{case}: something changed"
    assert (world.snapshot() if context else after) == untouched     # the context put everything back


def test_the_world_is_still_healthy_after_all_that(world):
    """The bad inputs above changed nothing: the hosts still serve v1 and a deploy has nothing to do."""
    for host in (world.file_host, world.ssh_host):
        world.env.serves(host, world.v1)
    r = run_mlops("sync", "deploy", "--json")
    assert r.returncode == 0 and '"up_to_date"' in r.stdout, r.stderr
