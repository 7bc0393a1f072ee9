"""Secrets with quotes, slashes and percent signs stay in the environment through a deploy to a
file, an ssh (pulling from a shared S3 store) and an s3 host, with the default SQLite ledger.

tests/test_security_secrets.py runs the whole flow to one file:// host with hex secrets (whose
escaped forms are the plain ones) and a PostgreSQL ledger. This one sets every variable of
``SECRET_ENV_VARS`` (but ``AWS_SESSION_TOKEN``, which the S3 server would check) and a database
password in ``MLFLOW_BACKEND_STORE_URI`` to values whose URL-encoded, form-encoded, JSON-escaped
and base64 forms differ from the plain text, then: promote (CLI), deploy, smoke with ``--junit``,
status, a second promote and deploy, rollback, history, status. Searched for each secret in each
form, for the basic-auth header and for any presigned URL (``X-Amz-Signature=``): every command's
output; every file created or changed under the temp folder and ``$HOME`` during the run (the
SQLite ledger, the MLflow server's DB and artifacts, the hosts' base folders and models.config,
the SSH host's files, the JUnit file, ``$MLOPS_HOME``); every object of the hosts' and the
store's buckets; every run, version and registered model read back through MlflowClient; and the
argv of every process on the machine, read every 20 ms while the commands ran (the remote shell
scripts, the host's curl pulling from the store). Files created and removed within the run
(lock files, ``.incoming-*`` folders) are not seen.
"""
from __future__ import annotations

import base64
import json
import os
import secrets
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from tests.helpers import mlflow_client

pytestmark = pytest.mark.slow


def _forms(value: str) -> dict[str, bytes]:
    return {"plain": value.encode(), "url-encoded": quote(value, safe="").encode(),
            "form-encoded": quote_plus(value).encode(), "json-escaped": json.dumps(value)[1:-1].encode(),
            "base64": base64.b64encode(value.encode())}


class ArgvWatch:
    """Reads /proc/*/cmdline every 20 ms on a thread; ``found`` lists (needle, argv) hits."""

    def __init__(self, needles: dict[str, bytes]):
        self.needles, self.found, self.seen = needles, [], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for d in os.listdir("/proc"):
                if not d.isdigit():
                    continue
                try:
                    argv = Path(f"/proc/{d}/cmdline").read_bytes()
                except OSError:
                    continue
                self.seen += 1
                self.found += [(n, argv[:200]) for n, v in self.needles.items() if v in argv]
            self._stop.wait(0.02)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _new_files(root: Path, since: float, skip):
    """Regular files under ``root`` changed since ``since`` (folders for which ``skip(path)`` is
    true are not entered), with their bytes."""
    for dirpath, dirnames, filenames in os.walk(root, onerror=lambda e: None):
        dirnames[:] = [d for d in dirnames if not skip(Path(dirpath, d))]
        for name in filenames:
            p = Path(dirpath, name)
            try:
                st = p.lstat()
                if st.st_mtime >= since and p.is_file() and st.st_size < 200 * 1024 * 1024:
                    yield p, p.read_bytes()
            except OSError:
                continue


def test_escaped_secrets_reach_no_file_object_tag_output_or_argv_of_a_three_kind_fleet(
        deploy_env, sshd_factory, s3_env, monkeypatch, tmp_path, tmp_path_factory):
    env = deploy_env
    file_h, ssh_h, s3_h = env.add_host("file"), env.add_host("ssh"), env.add_host("s3", grpc=False)
    store_bucket = s3_env.make_bucket("secret-store")
    env.hosts_file.write_text(f'store = "s3://{store_bucket}/{env.model}"\n' + env.hosts_file.read_text())

    def odd(tag: str) -> str:                                    # forms that differ from the text
        return f'{tag}"q\\/+&=%:{secrets.token_hex(8)}'

    values = {
        "MLFLOW_TRACKING_PASSWORD": odd("pw"), "MLFLOW_TRACKING_TOKEN": odd("tok"),
        "CIRCLE_TOKEN": odd("ci"), "CIRCLECI_TOKEN": odd("ci2"),
        "SLACK_WEBHOOK_URL": f"https://hooks.slack.com/services/T0/B0/{secrets.token_hex(12)}%2F+x",
        "MLOPS_WEBHOOK_SECRET": odd("wh"), "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": odd("enc"),
        "PGPASSWORD": odd("pg"),
    }
    db_password = odd("dbpw")
    urls = {"MLFLOW_BACKEND_STORE_URI": f"postgresql://mlflow:{quote(db_password, safe='')}@127.0.0.1:1/mlflow"}
    for k, v in {**values, **urls, "MLFLOW_TRACKING_USERNAME": "deployer"}.items():
        monkeypatch.setenv(k, v)
        env.env[k] = v
    needles = {f"{k} ({form})": n for k, v in {**values, "database password": db_password,
                                                  "AWS_SECRET_ACCESS_KEY": s3_env.secret_key}.items()
               for form, n in _forms(v).items()}
    needles["basic-auth header"] = base64.b64encode(f"deployer:{values['MLFLOW_TRACKING_PASSWORD']}".encode())
    junit = tmp_path / "smoke.xml"
    needles["a presigned URL (a credential too)"] = b"X-Amz-Signature="

    start = time.time() - 1
    outputs = []
    # (the S3 fixture key is the same in every test session: another session's argv may hold it)
    with ArgvWatch({k: v for k, v in needles.items() if not k.startswith("AWS_")}) as argv:
        v1 = env.register("a")
        v2 = env.register("b")
        for args in (("registry", "promote", "--version", str(v1), "--reason", "first"),
                     ("sync", "deploy", "--json"), ("sync", "smoke", "--junit", str(junit)),
                     ("sync", "status", "--json"),
                     ("registry", "promote", "--version", str(v2), "--reason", "second"),
                     ("sync", "deploy", "--json"),
                     ("sync", "rollback", "--reason", "back", "--json"),
                     ("registry", "history", "--json"), ("registry", "status", "--json")):
            r = env.cli(*args)
            outputs.append((args, r))
            assert r.returncode == 0, (args, r.stdout[-2000:], r.stderr[-3000:])
    assert argv.seen > 100
    first = json.loads(outputs[1][1].stdout)           # the ssh host pulled from the store
    assert first["status"] == "deployed" and len(first["stores"]) == 1, first["stores"]
    assert {h["host"]: (h.get("publish") or {}).get("status") for h in first["hosts"]}[ssh_h.name] == "pulled"
    for h in (file_h, ssh_h, s3_h):
        env.serves(h, v1)
    assert junit.is_file() and (Path(env.env["MLOPS_HOME"]) / "ledger.db").is_file()

    found: list[str] = []

    def search(where: str, data: bytes | str, skip: str = "-") -> None:
        blob = data.encode() if isinstance(data, str) else data
        found.extend(f"{name} in {where}" for name, n in needles.items() if n in blob and not name.startswith(skip))

    search("a planted value", b"<" + quote_plus(values["PGPASSWORD"]).encode() + b">")   # the search can fail
    assert "PGPASSWORD (form-encoded) in a planted value" in found and "PGPASSWORD (plain) in a planted value" \
        not in found, found
    found.clear()
    for args, r in outputs:
        search(f"output of `mlops {' '.join(args)}`", r.stdout + r.stderr)
    found += [f"{n} on argv {a!r}" for n, a in argv.found]
    # every file written during the run: the temp folder (this session's pytest folder with the
    # MLflow server's state, the hosts' bases, the SSH host's files, $MLOPS_HOME with its ledger;
    # anything else the commands left there) and $HOME. Other test sessions' pytest folders are
    # not entered, and outside ours the S3 server's fixture key (shared by every session and
    # written in each clone's tests/lab/s3.py) is not searched for.
    ours = tmp_path_factory.getbasetemp()
    pytest_root = next((a for a in (ours, *ours.parents) if a.name.startswith("pytest-of-")), None)

    def others(p: Path) -> bool:
        if p.name.startswith("bash_jobs."):
            return True
        return bool(pytest_root and p.is_relative_to(pytest_root) and p not in ours.parents
                    and not p.is_relative_to(ours))

    seen = set()
    for root in {Path(tempfile.gettempdir()), Path.home()}:
        for p, data in _new_files(root, start, others):
            if p not in seen:
                seen.add(p)
                if p.is_relative_to(ours):
                    search(str(p), data)
                else:
                    search(str(p), data, skip="AWS_SECRET_ACCESS_KEY")
    for must in (junit, Path(env.env["MLOPS_HOME"]) / "ledger.db", file_h.base / "models.config",
                 ssh_h.base / "models.config"):
        assert must in seen, must
    # every object of the hosts' and the store's buckets
    s3 = s3_env.client()
    bucket = s3_h.entry["target"].split("/")[2]
    keys = 0
    for b in (bucket, store_bucket):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=b):
            for o in page.get("Contents", []):
                keys += 1
                search(f"s3://{b}/{o['Key']}", s3.get_object(Bucket=b, Key=o["Key"])["Body"].read())
    assert keys > 5
    # MLflow, read back through its client: runs, versions, registered models
    client = mlflow_client(env.env["MLFLOW_TRACKING_URI"])
    for mv in client.search_model_versions(f"name='{env.model}'"):
        search(f"version {mv.version}", repr(dict(mv)) + json.dumps(mv.tags) + (mv.description or ""))
        if mv.run_id:
            run = client.get_run(mv.run_id)
            search(f"run {mv.run_id}", json.dumps(run.to_dictionary(), default=str))
    rm = client.get_registered_model(env.model)
    search("registered model", repr(dict(rm)) + json.dumps(rm.tags) + (rm.description or ""))
    assert found == [], found
