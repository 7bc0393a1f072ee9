"""The production topology as documented: docs/production.md and deploy/ say true, checkable things.

deploy/docker-compose.yml cannot run here (no Docker engine), so it is checked for what can be
checked without one: valid Compose (the Compose Specification schema), every file it references
exists, pins match the project's, the tfserving service runs exactly install_server.sh's flags,
and secrets are only ever interpolated from the shell. The hosts files parse with the sync's own
parser; the settings table covers every variable of the CircleCI contexts.
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mlops_common.settings import SECRET_ENV_VARS
from serving_sync.hosts import parse_hosts_toml
from tests.helpers import REPO

DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
DOC = REPO / "docs" / "production.md"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        m = re.match(r"([A-Za-z0-9_.-]+)==([^\s;]+)", line)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def install_script_docker_run(base: str) -> list[str]:
    """The `docker run` words serving_host/install_server.sh would run (its --dry-run, no Docker)."""
    p = subprocess.run(["bash", str(REPO / "serving_host" / "install_server.sh"), "--dry-run", "--base", base,
                        "--deploy-user", "nobody"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    runs = [shlex.split(line) for line in p.stdout.splitlines() if line.startswith("docker run ")]
    assert len(runs) == 1, p.stdout
    return runs[0]


def test_compose_is_valid_compose_and_says_it_is_not_tested_here():
    p = subprocess.run([str(Path(sys.executable).parent / "check-jsonschema"), "--builtin-schema",
                        "vendor.compose-spec", str(COMPOSE)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "NOT TESTED HERE" in COMPOSE.read_text().split("\nname:")[0]


def test_compose_references_only_files_that_exist(compose):
    referenced = []
    for name, svc in compose["services"].items():
        build = svc.get("build")
        if build:
            ctx = build if isinstance(build, str) else build.get("context", ".")
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            referenced += [(name, COMPOSE.parent / ctx), (name, COMPOSE.parent / ctx / dockerfile)]
        for vol in svc.get("volumes", []):
            source = vol.get("source") if isinstance(vol, dict) else vol.split(":", 1)[0]
            if source.startswith("."):
                referenced.append((name, COMPOSE.parent / source))
            else:   # a named volume, or a host folder the install script prepares
                assert source in compose.get("volumes", {}) or source.startswith("${MLOPS_SERVING_BASE:-/"), \
                    (name, source)
        for env_file in ([svc["env_file"]] if isinstance(svc.get("env_file"), str) else svc.get("env_file", [])):
            referenced.append((name, COMPOSE.parent / env_file))
    assert any(name == "mlflow-db-upgrade" for name, _ in referenced)
    missing = [(name, str(p)) for name, p in referenced if not p.exists()]
    assert not missing, missing
    for path in re.findall(r"(?:serving_host|deploy|scripts)/[\w./-]+\.(?:sh|toml|yml)", COMPOSE.read_text()):
        assert (REPO / path).is_file(), path


def test_compose_pins_match_the_project(compose):
    images = {name: svc["image"] for name, svc in compose["services"].items()}
    for name, image in images.items():
        assert ":" in image and not image.endswith(":latest"), (name, image)
    pins = lock_pins()
    dockerfile = (DEPLOY / "mlflow" / "Dockerfile").read_text()
    for pkg in ("mlflow", "psycopg2-binary", "boto3"):
        assert f"{pkg}=={pins[pkg]}" in dockerfile, pkg
    assert images["mlflow"] == images["mlflow-db-upgrade"] == f"tfmodel-delivery/mlflow:{pins['mlflow']}"
    weed = subprocess.run([str(Path(sys.executable).parent / "weed"), "version"], capture_output=True, text=True,
                          timeout=60)
    assert images["seaweedfs"].rsplit(":", 1)[1] in weed.stdout.split()       # same SeaweedFS as the tests
    assert images["postgres"].split(":")[1].split(".")[0] == "15"              # same major as the tests


def test_tfserving_service_runs_exactly_the_install_scripts_server(compose):
    svc = compose["services"]["tfserving"]
    words = install_script_docker_run("/var/tmp/mlops-serving")
    image_at = next(i for i, w in enumerate(words) if w.startswith("tensorflow/serving:"))
    assert svc["image"] == words[image_at]
    assert svc["entrypoint"] == [words[words.index("--entrypoint") + 1]]
    assert svc["command"] == words[image_at + 1:]
    mount = next(w for w in words if w.startswith("type=bind"))
    assert "target=/models" in mount and "readonly" in mount
    vol = svc["volumes"][0]
    assert (vol["target"], vol["read_only"]) == ("/models", True)
    assert sorted(svc["ports"]) == ["127.0.0.1:8500:8500", "127.0.0.1:8501:8501"]
    # the log is rotated as the install script rotates it (found by review, 2026-12-06, fourteenth
    # stop: TF Serving logs every config poll, and Compose's default json-file log grew unbounded)
    log_opts = dict(words[i + 1].split("=", 1) for i, w in enumerate(words) if w == "--log-opt")
    assert log_opts == {"max-size": "20m", "max-file": "5"}
    assert svc["logging"] == {"driver": "json-file", "options": log_opts}


def test_mlflow_runs_on_postgres_and_s3_with_workers_after_its_migration(compose):
    services = compose["services"]
    upgrade, server = services["mlflow-db-upgrade"], services["mlflow"]
    cmd = server["command"]
    backend = cmd[cmd.index("--backend-store-uri") + 1]
    assert backend.startswith("postgresql+psycopg2://") and ":" not in backend.split("//", 1)[1].split("@")[0]
    assert cmd[cmd.index("--artifacts-destination") + 1].startswith("s3://")
    assert int(cmd[cmd.index("--workers") + 1]) >= 2
    assert upgrade["command"] == ["db", "upgrade", backend]
    assert server["depends_on"]["mlflow-db-upgrade"]["condition"] == "service_completed_successfully"
    bucket = cmd[cmd.index("--artifacts-destination") + 1].split("/")[2]
    assert bucket in next(a for a in services["seaweedfs"]["command"] if a.startswith("-bucket="))


def test_secrets_are_only_interpolated_from_the_shell(compose):
    secretish = set(SECRET_ENV_VARS) | {"PGPASSWORD", "POSTGRES_PASSWORD", "AWS_ACCESS_KEY_ID"}
    seen = 0
    for name, svc in compose["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if key in secretish:
                seen += 1
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(value)), (name, key, value)
    assert seen >= 6
    assert not list(DEPLOY.rglob("*.env")) and not list(DEPLOY.rglob(".env"))


@pytest.mark.parametrize("path, count", [("deploy/hosts.example.toml", 3), ("deploy/hosts.compose.toml", 1)])
def test_example_hosts_files_parse(path, count):
    hosts = parse_hosts_toml((REPO / path).read_text(), path)
    assert len(hosts) == count
    assert all(h.serving_base_path() == "/models" for h in hosts)


def test_production_doc_covers_every_context_variable_and_names_real_files():
    doc = DOC.read_text()
    header = (REPO / ".circleci" / "config.yml").read_text().split("\nversion:")[0]
    contexts = re.findall(r"#\s+(mlops-[a-z]+)\s", header)
    assert sorted(set(contexts)) == ["mlops-deploy", "mlops-tracking"]
    for ctx in contexts:
        assert f"`{ctx}`" in doc, ctx
    table = doc.split("## Which setting points where", 1)[1].split("\n## ", 1)[0]
    context_vars = set(re.findall(r"\b(?:MLFLOW|MLOPS|AWS|CIRCLE|SLACK)_[A-Z_]+\b", header))
    assert context_vars, header
    missing = sorted(v for v in context_vars if f"`{v}`" not in table)
    assert not missing, f"settings table lacks {missing}"
    for path in set(re.findall(r"`((?:deploy|serving_host|scripts|registry|mlops|tests|docs)/[\w./<>-]+)`", doc)):
        if "<" in path:
            continue
        assert (REPO / path).exists(), path
