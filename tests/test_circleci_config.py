"""Checks on .circleci/config.yml that need no CircleCI: the official schema plus the project's
own rules that a schema cannot express."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO
from tests.lab.circleci import LocalCircleCI, Unsupported, env_value, evaluate_when, load_config, substitute

CONFIG_PATH = REPO / ".circleci" / "config.yml"
# The only facts a job may hand to later jobs through the workspace.
WORKSPACE_ALLOWLIST = {"version"}


@pytest.fixture(scope="module")
def config():
    return yaml.safe_load(CONFIG_PATH.read_text())


def _workflow_jobs(wf):
    out = {}
    for item in wf["jobs"]:
        name, spec = (item, {}) if isinstance(item, str) else next(iter(item.items()))
        out[(spec or {}).get("name", name)] = {**(spec or {}), "job": name}
    return out


def _ancestors(jobs, name):
    seen, stack = set(), list(jobs[name].get("requires", []))
    while stack:
        j = stack.pop()
        if j not in seen:
            seen.add(j)
            stack.extend(jobs[j].get("requires", []))
    return seen


def _run_commands(config, job_name):
    """All shell commands a job runs, with reusable commands expanded."""
    cmds = []

    def walk(steps):
        for step in steps:
            kind = step if isinstance(step, str) else next(iter(step))
            spec = None if isinstance(step, str) else step[kind]
            if kind == "run":
                cmds.append(spec if isinstance(spec, str) else spec["command"])
            elif kind in config.get("commands", {}):
                walk(config["commands"][kind]["steps"])

    walk(config["jobs"][job_name]["steps"])
    return cmds


def test_config_matches_circleci_schema():
    exe = Path(sys.executable).with_name("check-jsonschema")
    p = subprocess.run([str(exe), "--builtin-schema", "vendor.circle-ci", str(CONFIG_PATH)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr


def test_every_requires_names_a_job_of_its_workflow(config):
    for wf_name, wf in config["workflows"].items():
        jobs = _workflow_jobs(wf)
        for name, spec in jobs.items():
            for req in spec.get("requires", []):
                assert req in jobs, f"{wf_name}: {name} requires unknown job {req}"


CHANGES_PRODUCTION = r"mlops (registry (promote|rollback)|sync (deploy|rollback|watch))"


def _jobs_running(config, pattern: str):
    """(workflow, its jobs, job name, spec) of every non-approval job with a command matching ``pattern``."""
    for wf_name, wf in config["workflows"].items():
        jobs = _workflow_jobs(wf)
        for name, spec in jobs.items():
            if spec.get("type") != "approval" and any(re.search(pattern, c)
                                                      for c in _run_commands(config, spec["job"])):
                yield wf_name, jobs, name, spec


def _approvals_before(jobs, name) -> list[str]:
    return [a for a in _ancestors(jobs, name) if jobs[a].get("type") == "approval"]


def test_promote_and_deploy_come_after_an_approval(config):
    """Every workflow that promotes or deploys has an approval job before the promotion step."""
    found = list(_jobs_running(config, CHANGES_PRODUCTION))
    for wf_name, jobs, name, _ in found:
        assert _approvals_before(jobs, name), f"{wf_name}: {name} changes production without an approval before it"
    assert len(found) >= 3  # promote-and-deploy in two workflows, rollback-and-deploy in one


def test_a_version_is_promoted_only_after_its_gate_and_its_infra_validation(config):
    """Promote checks the gate's verdict on the version, not infra-validate's: the job order is what
    makes a version that TF Serving cannot load stop before the approval."""
    found = list(_jobs_running(config, r"mlops registry promote"))
    for wf_name, jobs, name, _ in found:
        before = {jobs[a]["job"] for a in _ancestors(jobs, name)}
        assert {"gate", "infra-validate"} <= before, f"{wf_name}: {name} promotes before {before}"
        holds = _approvals_before(jobs, name)
        assert holds and all("infra-validate" in {jobs[b]["job"] for b in _ancestors(jobs, h)} for h in holds), \
            f"{wf_name}: the approval comes before infra-validate"
    assert len(found) >= 2


FLEET_GROUP = "<< pipeline.project.slug >>/serving-fleet"


def test_deploys_of_the_fleet_run_one_at_a_time_across_pipelines(config):
    found = list(_jobs_running(config, r"mlops sync (deploy|rollback)"))
    for wf_name, _, name, spec in found:
        assert spec.get("serial-group"), f"{wf_name}: {name} deploys without a serial-group"
    assert len(found) >= 3 and len({spec["serial-group"] for *_, spec in found}) == 1   # one group everywhere


def test_the_fleets_serial_group_belongs_to_this_project(config, tmp_path):
    """A serial group is shared by the whole CircleCI organisation, across projects: the fixed
    ``mlops/serving-fleet`` queued this project's deploys behind (and skipped them for) any other
    project's job that used the same string. The project slug scopes it to this project."""
    groups = {spec["serial-group"] for wf in config["workflows"].values()
              for spec in _workflow_jobs(wf).values() if "serial-group" in spec}
    assert groups == {FLEET_GROUP}, groups
    # the pipeline value exists (the harness knows CircleCI's names and refuses unknown ones)
    ci = LocalCircleCI(tmp_path)
    resolved = {spec["serial-group"] for wf in ci.config["workflows"].values()
                for spec in ci._workflow_jobs(wf).values() if "serial-group" in spec}   # noqa: SLF001
    assert resolved == {f"{ci.values['pipeline.project.slug']}/serving-fleet"}


def test_every_job_that_moves_production_deploys_it_in_the_same_job(config):
    """Promote and deploy were separate jobs in the fleet's serial group. CircleCI skips an older
    pipeline's job while a newer pipeline's job of the group runs or waits, so an older pipeline's
    deploy was skipped after its promotion had run: production named a version no host got (and
    the newer promotion, gated against the old production, was refused). Each job that moves
    production deploys and smoke-tests in the same job, in the group; no other job deploys."""
    moves = list(_jobs_running(config, r"mlops registry (promote|rollback)"))
    deploys = list(_jobs_running(config, r"mlops sync (deploy|rollback)"))
    assert len(moves) >= 3 and {n for _, _, n, _ in moves} == {n for _, _, n, _ in deploys}
    for wf_name, _, name, spec in moves:
        cmds = _run_commands(config, spec["job"])
        move = next(i for i, c in enumerate(cmds) if re.search(r"mlops registry (promote|rollback)", c))
        deploy = next(i for i, c in enumerate(cmds) if "mlops sync deploy" in c)
        smoke = next(i for i, c in enumerate(cmds) if "mlops sync smoke" in c)
        assert move < deploy < smoke, f"{wf_name}: {name} runs {cmds}"
        assert spec.get("serial-group"), f"{wf_name}: {name} moves production outside the deploys' group"
        if "mlops registry promote" in cmds[move]:      # the version it promoted, or nothing
            assert '--expect-version "$(cat workspace/version)"' in cmds[deploy], cmds[deploy]
        # another deploy (a watcher, a person) holding the lock is waited for, bounded: failing at
        # once left production on a version no host got (found by review, tenth stop)
        wait = re.search(r"--lock-wait (\d+)", cmds[deploy])
        assert wait and 600 < int(wait.group(1)) <= 1800, f"{wf_name}: {name}: {cmds[deploy]}"


def test_infra_validation_uses_the_real_image_in_circleci(config):
    """``--server auto`` validated against the local stand-in whenever no Docker engine answered,
    and the job passed; the approver trusted the real image."""
    found = list(_jobs_running(config, r"mlops sync infra-validate"))
    assert found
    for *_, spec in found:
        command = next(s["run"]["command"] for s in config["jobs"][spec["job"]]["steps"]
                       if isinstance(s, dict) and "infra-validate" in str(s.get("run", "")))
        assert '--server "${MLOPS_INFRA_SERVER:-docker}"' in command, command


def test_approval_jobs_are_not_defined_under_jobs(config):
    approvals = {n for wf in config["workflows"].values() for n, s in _workflow_jobs(wf).items()
                 if s.get("type") == "approval"}
    assert approvals, "the pipeline must have approval jobs"
    assert not approvals & set(config["jobs"]), "approval jobs must exist only in workflows"


def _mlops_invocations(config):
    for job_name in config["jobs"]:
        for cmd in _run_commands(config, job_name):
            for line in cmd.splitlines():
                m = re.search(r"(?:\.venv/bin/)?mlops\s+(.*)", line)
                if m and not line.strip().startswith("#"):
                    yield job_name, m.group(1)


def test_every_mlops_command_and_flag_a_job_runs_exists(config):
    invocations = list(_mlops_invocations(config))
    assert len(invocations) >= 8
    for job_name, rest in invocations:
        words = shlex.split(re.sub(r"\$\([^)]*\)|\$\{[^}]*\}|\$\w+", "X", rest.split(">")[0]))
        sub = [w for w in itertools_takewhile(words)]
        p = subprocess.run([sys.executable, "-m", "mlops", *sub, "--help"], capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 0, f"job {job_name}: `mlops {' '.join(sub)}` does not exist: {p.stderr}"
        for flag in (w.split("=")[0] for w in words if w.startswith("--")):
            assert flag in p.stdout, f"job {job_name}: `mlops {' '.join(sub)}` has no option {flag}"


def itertools_takewhile(words):
    for w in words:
        if w.startswith("-"):
            return
        yield w


def test_workspace_carries_only_small_facts(config):
    persisted = []
    for job in config["jobs"].values():
        for step in job["steps"]:
            if isinstance(step, dict) and "persist_to_workspace" in step:
                persisted += step["persist_to_workspace"]["paths"]
    assert persisted and set(persisted) <= WORKSPACE_ALLOWLIST, persisted
    secret_names = ("PASSWORD", "SECRET", "TOKEN", "WEBHOOK_URL", "LEDGER_URL")
    for job_name in config["jobs"]:
        for cmd in _run_commands(config, job_name):
            for line in cmd.splitlines():
                if "workspace" in line:
                    assert not any(s in line for s in secret_names), f"{job_name}: {line}"


def test_gate_job_stores_the_reports_the_approver_opens(config):
    """Every gate job writes its reports (report.html for people) into a folder it stores as an
    artifact, and the approval comes after a gate in each workflow that promotes a new version."""
    gate_jobs = [name for name in config["jobs"]
                 if any("mlops registry gate" in c for c in _run_commands(config, name))]
    assert gate_jobs
    for name in gate_jobs:
        (cmd,) = [c for c in _run_commands(config, name) if "mlops registry gate" in c]
        words = shlex.split(cmd)
        report_dir = words[words.index("--report-dir") + 1]
        stored = [step["store_artifacts"]["path"] for step in config["jobs"][name]["steps"]
                  if isinstance(step, dict) and "store_artifacts" in step]
        assert report_dir in stored, f"{name} writes {report_dir} but stores {stored}"
    for wf_name, wf in config["workflows"].items():
        jobs = _workflow_jobs(wf)
        for name, spec in jobs.items():
            if spec["job"] == "promote-and-deploy":
                assert {j for j in _ancestors(jobs, name) if jobs[j]["job"] in gate_jobs}, \
                    f"{wf_name}: {name} promotes without a gate report to look at"


def test_secrets_come_from_contexts_only(config):
    text = CONFIG_PATH.read_text()
    assert not re.search(r"(PASSWORD|SECRET|TOKEN)\s*:\s*\S", text), "a secret is set in the config"
    found = list(_jobs_running(config, CHANGES_PRODUCTION))
    for _, _, name, spec in found:
        assert "mlops-deploy" in spec.get("context", []), f"{name} must use the restricted context"
    assert {spec["job"] for *_, spec in found} >= {"promote-and-deploy", "rollback-and-deploy"}


def test_workflow_selection_by_trigger(tmp_path):
    def selected(**kw):
        return LocalCircleCI(tmp_path, **kw).workflows()

    assert selected() == ["build-deploy"]
    assert selected(branch="feature") == ["test"]
    assert selected(trigger_source="scheduled_pipeline") == ["retrain-deploy"]
    assert selected(parameters={"run-retrain": True, "incoming": "s3://b/p"}) == ["retrain-deploy"]
    assert selected(parameters={"run-rollback": True}) == ["rollback"]
    # another branch's config and code never reach production (found in review: retrain-deploy and
    # rollback ran on any branch an API call or a schedule named)
    for kw in ({"trigger_source": "scheduled_pipeline"}, {"parameters": {"run-retrain": True}},
               {"parameters": {"run-rollback": True}}):
        assert selected(branch="feature-x", **kw) == [], kw


def _test_jobs(config) -> set[str]:
    """Jobs that lint and run the suite: the CI entry point, which is `make test` (ruff, pytest)."""
    assert "exec make test" in (REPO / ".ci" / "run").read_text()
    makefile = (REPO / "Makefile").read_text()
    recipe = makefile[makefile.index("\ntest:"):].split("\n\n")[0]
    assert "ruff check ." in recipe and "pytest" in recipe, recipe
    return {name for name in config["jobs"]
            if any(re.search(r"(^|\s)(bash )?\.ci/run\b", c) for c in _run_commands(config, name))}


def test_nothing_trains_or_deploys_before_the_tests_passed(config):
    """A push to main went train -> gate -> hold -> deploy with code no job had tested or linted;
    a scheduled retrain ran main's code even when that push had failed its tests."""
    tests = _test_jobs(config)
    assert tests, "no job runs .ci/run"
    builds = list(_jobs_running(config, r"mlops (train|retrain)\b"))
    assert {wf for wf, *_ in builds} >= {"build-deploy", "retrain-deploy"}, builds
    for wf_name, jobs, name, spec in builds:
        assert {jobs[a]["job"] for a in _ancestors(jobs, name)} & tests, \
            f"{wf_name}: {name} runs before (or without) the tests"
    build = _workflow_jobs(config["workflows"]["build-deploy"])
    assert "test" in build["train"].get("requires", []), build["train"]
    for name in tests:
        stored = [s["store_test_results"]["path"] for s in config["jobs"][name]["steps"]
                  if isinstance(s, dict) and "store_test_results" in s]
        assert stored == ["test-results"], f"{name} must store make test's junit.xml: {stored}"


@pytest.mark.parametrize("branch", ["main", "feature-x", "renovate/pin-deps"])
def test_every_push_runs_the_tests(tmp_path, config, branch):
    ci = LocalCircleCI(tmp_path, branch=branch)
    selected = ci.workflows()
    jobs = {spec["job"] for wf in selected for spec in ci._workflow_jobs(ci.config["workflows"][wf]).values()}  # noqa: SLF001
    assert jobs & _test_jobs(config), f"a push to {branch} runs {selected}: no tests"


# ---- the harness itself ----------------------------------------------------------------------

def _mini_config(tmp_path, body):
    path = tmp_path / "config.yml"
    path.write_text(textwrap.dedent(body))
    return path


def test_harness_runs_jobs_in_order_with_workspace_and_approval(tmp_path):
    cfg = _mini_config(tmp_path, """
        version: 2.1
        parameters:
          word: {type: string, default: hello}
        jobs:
          make:
            docker: [{image: x}]
            steps:
              - run: mkdir -p ws && echo "<< pipeline.parameters.word >>" > ws/fact
              - persist_to_workspace: {root: ws, paths: [fact]}
          use:
            docker: [{image: x}]
            steps:
              - attach_workspace: {at: ws}
              - run: test "$(cat ws/fact)" = bye && echo "$CIRCLE_JOB" > out.txt
              - store_artifacts: {path: out.txt}
        workflows:
          w:
            jobs:
              - make
              - hold: {type: approval, requires: [make]}
              - use: {requires: [hold]}
    """)
    ci = LocalCircleCI(tmp_path / "run", parameters={"word": "bye"}, config_path=cfg)
    held = ci.run_workflow("w")
    assert (held.status("make"), held.status("hold"), held.status("use")) == ("success", "on_hold", "blocked")
    done = ci.run_workflow("w", approve=lambda job, wid: "alice")
    assert done.status("use") == "success", done.log()
    assert (done.artifacts / "use" / "store_artifacts" / "out.txt").read_text().strip() == "use"


def test_harness_skips_only_the_jobs_it_is_told_to(tmp_path):
    cfg = _mini_config(tmp_path, """
        version: 2.1
        jobs:
          suite:
            docker: [{image: x}]
            steps: [{run: exit 1}]
          after:
            docker: [{image: x}]
            steps: [{run: "true"}]
        workflows:
          w: {jobs: [suite, {after: {requires: [suite]}}]}
    """)
    ran = LocalCircleCI(tmp_path / "a", config_path=cfg).run_workflow("w")
    assert (ran.status("suite"), ran.status("after")) == ("failed", "blocked")
    skipped = LocalCircleCI(tmp_path / "b", config_path=cfg, skip_jobs={"suite"}).run_workflow("w")
    assert (skipped.status("suite"), skipped.status("after")) == ("success", "success")
    assert skipped.jobs["suite"].steps[0].skipped


def test_harness_runs_on_fail_steps_only_after_a_failure(tmp_path):
    cfg = _mini_config(tmp_path, """
        version: 2.1
        jobs:
          j:
            docker: [{image: x}]
            steps:
              - run: exit 3
              - run: echo never
              - run: {name: notify, when: on_fail, command: echo notified}
        workflows:
          w: {jobs: [j]}
    """)
    res = LocalCircleCI(tmp_path / "run", config_path=cfg).run_workflow("w")
    steps = res.jobs["j"].steps
    assert res.status("j") == "failed"
    assert steps[1].skipped and not steps[2].skipped and "notified" in steps[2].output


def test_harness_refuses_what_it_does_not_implement(tmp_path):
    cfg = _mini_config(tmp_path, """
        version: 2.1
        orbs: {slack: circleci/slack@4}
        jobs: {}
        workflows: {}
    """)
    with pytest.raises(Unsupported, match="orbs"):
        load_config(cfg)
    with pytest.raises(Unsupported):
        evaluate_when({"matches": {"pattern": "x", "value": "y"}})
    with pytest.raises(Unsupported):
        substitute("<< pipeline.nope >>", {})


def _run_step(tmp_path, job: str, step_name: str, parameters: dict, env: dict | None = None, *,
              writes_version: bool = True) -> list[str]:
    """Run one ``run`` step of ``job`` (pipeline values substituted) with a stand-in ``mlops`` that
    records its arguments and answers like ``mlops train --json``; returns those arguments."""
    import json
    import os

    ci = LocalCircleCI(tmp_path / "ci", parameters=parameters)
    steps = ci._expand(ci.config["jobs"][job]["steps"])       # noqa: SLF001 - the harness's own expansion
    spec = next(s["run"] for s in steps if isinstance(s, dict) and "run" in s
                and isinstance(s["run"], dict) and s["run"].get("name") == step_name)
    work = tmp_path / "work"
    (work / ".venv" / "bin").mkdir(parents=True)
    fake = work / ".venv" / "bin" / "mlops"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    "json.dump(sys.argv[1:], open('args.json', 'w'))\n"
                    "print(json.dumps({'version': 7, 'to_version': 7}))\n")
    fake.chmod(0o755)
    (work / ".venv" / "bin" / "python").symlink_to(sys.executable)
    step_env = {**os.environ, **(env or {}), **{k: env_value(v) for k, v in (spec.get("environment") or {}).items()}}
    p = subprocess.run(["bash", "-eo", "pipefail", "-c", spec["command"]], cwd=work, env=step_env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    if writes_version:
        assert (work / "workspace" / "version").read_text().strip() == "7"
    return json.loads((work / "args.json").read_text())


def test_retrain_keeps_the_production_data_set_unless_the_pipeline_names_one(tmp_path):
    """A scheduled retrain must not force a data set: once production was trained on digits, a
    forced fashion_mnist made every retrain fail (retrain's own default is production's)."""
    step = "Retrain on the incoming batches and register"
    args = _run_step(tmp_path / "a", "retrain", step, {"run-retrain": True, "incoming": "s3://b/new"})
    assert "--dataset" not in args and args[:3] == ["retrain", "--incoming", "s3://b/new"]
    args = _run_step(tmp_path / "b", "retrain", step, {"run-retrain": True, "dataset": "digits"},
                     env={"MLOPS_INCOMING": "s3://b/ctx"})
    assert args[args.index("--dataset") + 1] == "digits" and args[2] == "s3://b/ctx"
    # train: auto is fashion_mnist (Keras's loader), or what the pipeline names
    args = _run_step(tmp_path / "c", "train", "Train and register", {})
    assert args[args.index("--dataset") + 1] == "fashion_mnist"
    args = _run_step(tmp_path / "d", "train", "Train and register", {"dataset": "digits"})
    assert args[args.index("--dataset") + 1] == "digits"


def test_an_empty_pipeline_parameter_means_its_documented_default_on_circleci(tmp_path):
    """CircleCI hands an empty pipeline value set in a step's ``environment`` to the job as the text
    ``<nil>`` (its "Project values and variables" page). A scheduled retrain (no ``incoming``)
    retrained on ``--incoming '<nil>'`` instead of MLOPS_INCOMING, and a rollback with the default
    ``rollback-to`` ran ``--to '<nil>'`` instead of going back to the previous production."""
    assert env_value("") == "<nil>" and env_value("s3://b/x") == "s3://b/x"
    step = "Retrain on the incoming batches and register"
    args = _run_step(tmp_path / "a", "retrain", step, {"run-retrain": True}, env={"MLOPS_INCOMING": "s3://b/ctx"})
    assert args[:3] == ["retrain", "--incoming", "s3://b/ctx"], args
    rollback = "Move production back"
    args = _run_step(tmp_path / "b", "rollback-and-deploy", rollback, {"run-rollback": True})
    assert args[:2] == ["registry", "rollback"] and not any(a.startswith("--to") for a in args), args
    assert "<nil>" not in " ".join(args), args
    assert "--reason=rollback requested through the CircleCI API" in args, args
    args = _run_step(tmp_path / "c", "rollback-and-deploy", rollback,
                     {"run-rollback": True, "rollback-to": "4", "rollback-reason": ""})
    assert args == ["registry", "rollback", "--to=4", "--json"], args


def test_a_rollback_job_deploys_the_version_it_rolled_back_to_or_nothing(config):
    """Found by review (seventeenth stop): `rollback-and-deploy` ran `mlops sync deploy` with no
    `--expect-version`, so a person promoting by hand between its rollback step and its deploy step
    had their version deployed by this job. Like `promote-and-deploy`, its deploy now expects the
    version its own rollback step recorded (`registry rollback --json`'s `to_version`)."""
    for job in ("promote-and-deploy", "rollback-and-deploy"):
        deploys = [c for c in _run_commands(config, job) if "mlops sync deploy" in c]
        assert deploys, job
        for cmd in deploys:
            assert '--expect-version "$(cat workspace/version)"' in cmd, (job, cmd)
    (moves,) = [c for c in _run_commands(config, "rollback-and-deploy") if "mlops registry rollback" in c]
    assert "--json > reports/rollback.json" in moves and '["to_version"])\' > workspace/version' in moves, moves


def test_the_dependency_cache_is_never_shared_between_executor_kinds(tmp_path, config):
    """A .venv saved in the cimg/python image points at that image's interpreter; restored on a
    machine executor (infra-validate's docker-vm) it does not start (CircleCI's caching docs warn
    about caches across Docker and machine executors)."""
    ci = LocalCircleCI(tmp_path)
    keys: dict[str, set[str]] = {}
    for name, job in ci.config["jobs"].items():
        kind = "machine" if "machine" in job or job.get("executor") in ("docker-vm", "gpu") else "docker"
        for step in ci._expand(job["steps"]):                  # noqa: SLF001
            if isinstance(step, dict) and "restore_cache" in step:
                keys.setdefault(kind, set()).update(step["restore_cache"]["keys"])
    assert keys.get("docker") and keys.get("machine"), keys
    assert not keys["docker"] & keys["machine"], keys


# What each context must hold for the jobs that use it (README "CircleCI", "Set up a project"):
# without one, mlops fell back to a default a fresh container does not have.
CONTEXT_NEEDS = {"mlops-tracking": ("MLFLOW_TRACKING_URI", "MLOPS_LEDGER_URL", "MLOPS_MODEL_NAME"),
                 "mlops-deploy": ("CIRCLE_TOKEN", "MLOPS_HOSTS_FILE")}
_WORKFLOW_PARAMETERS = {"build-deploy": {}, "retrain-deploy": {"run-retrain": True},
                        "rollback": {"run-rollback": True}}


def _jobs_with_contexts(config):
    """(workflow, job, its contexts) for every job that uses a context, each job once."""
    seen = {}
    for wf_name in _WORKFLOW_PARAMETERS:
        for name, spec in _workflow_jobs(config["workflows"][wf_name]).items():
            if spec.get("context") and spec["job"] not in seen:
                seen[spec["job"]] = (wf_name, name, tuple(spec["context"]))
    return list(seen.values())


def test_a_job_missing_a_variable_of_its_context_says_which_and_where_before_doing_anything(tmp_path, config):
    """Found by review (twentieth stop): a job whose context lacked MLOPS_LEDGER_URL trained,
    registered and wrote its ledger rows into a throw-away SQLite file of its own checkout (every
    later job read an empty ledger); without MLFLOW_TRACKING_URI or MLOPS_HOSTS_FILE the lines said
    "start it with `mlops up`" or "create ./.mlops/hosts.toml", which no CircleCI job can. Each job
    now stops right after its checkout, with one line naming the variable and its context."""
    found = _jobs_with_contexts(config)
    assert {job for _, job, _ in found} >= {"train", "retrain", "gate", "infra-validate", "promote-and-deploy",
                                            "rollback-and-deploy"}, found
    ledger = tmp_path / "ledger.db"
    full = {"mlops-tracking": {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "MLOPS_LEDGER_URL": f"sqlite:///{ledger}",
                               "MLOPS_MODEL_NAME": "ci-model"},
            "mlops-deploy": {"CIRCLE_TOKEN": "ci-token", "MLOPS_HOSTS_FILE": str(tmp_path / "hosts.toml")}}
    cases = [(wf, job, ctx, (name,)) for wf, job, ctxs in found for ctx in ctxs for name in CONTEXT_NEEDS[ctx]]
    cases.append(("build-deploy", "promote-and-deploy", "mlops-deploy", CONTEXT_NEEDS["mlops-deploy"]))
    for i, (wf, job, ctx, missing) in enumerate(cases):
        contexts = {c: {k: v for k, v in env.items() if k not in missing} for c, env in full.items()}
        ci = LocalCircleCI(tmp_path / f"run-{i}", parameters=_WORKFLOW_PARAMETERS[wf], contexts=contexts,
                           skip_jobs=set(ci_jobs(config)) - {job}, step_timeout=120,
                           project_env={"MLOPS_MLFLOW_PORT": "9", "TF_CPP_MIN_LOG_LEVEL": "3"})
        res = ci.run_workflow(wf, approve=lambda j, w: "alice")
        result = res.jobs[job]
        assert result.status == "failed", (job, missing, res.log())
        ran = [s for s in result.steps if not s.skipped]
        failed = next(s for s in ran if s.returncode != 0)
        verb, pronoun = ("are", "them") if len(missing) > 1 else ("is", "it")
        assert failed.output.strip() == (
            f"error: {', '.join(missing)} {verb} not set in this job: add {pronoun} to the CircleCI context {ctx} "
            f"(Organization Settings > Contexts), then rerun the workflow; nothing was done"), (job, missing, failed)
        assert failed.returncode == 2
        # only the checkout (and the other context's check) came before: nothing installed or run;
        # after it only what CircleCI always runs, and the team was told
        before, after = [s.name for s in ran[:ran.index(failed)]], [s.name for s in ran[ran.index(failed) + 1:]]
        assert before[0] == "checkout" and all(n.startswith("Check the variables of") for n in before[1:]), before
        assert "Notify on failure" in after and set(after) <= {"Notify on failure", "store_artifacts",
                                                               "store_test_results"}, after
    assert not ledger.exists()


def ci_jobs(config) -> list[str]:
    return list(config["jobs"])


def _smoke_step(tmp_path, job: str, workspace_version: int, env: dict):
    """Run ``job``'s smoke step (its config command, pipeline values substituted) with the real
    mlops, in a checkout whose workspace holds ``workspace_version``; the finished process."""
    import os

    ci = LocalCircleCI(tmp_path / "ci", parameters={"run-rollback": job == "rollback-and-deploy"})
    steps = ci._expand(ci.config["jobs"][job]["steps"])       # noqa: SLF001 - the harness's own expansion
    (spec,) = [s["run"] for s in steps if isinstance(s, dict) and "run" in s and isinstance(s["run"], dict)
               and "mlops sync smoke" in s["run"]["command"]]
    work = tmp_path / "work"
    (work / "workspace").mkdir(parents=True)
    (work / "workspace" / "version").write_text(f"{workspace_version}\n")
    (work / ".venv" / "bin").mkdir(parents=True)
    (work / ".venv" / "bin" / "mlops").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m mlops "$@"\n')
    (work / ".venv" / "bin" / "mlops").chmod(0o755)
    return subprocess.run(["bash", "-eo", "pipefail", "-c", spec["command"]], cwd=work,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=300)


def test_the_smoke_step_checks_the_version_its_job_deployed_not_whatever_production_names(deploy_env, tmp_path):
    """Found by review (twentieth stop): the smoke step after a job's deploy ran `mlops sync smoke`
    without a version, so it checked whatever production named at that moment. A person promoting v2
    after the job deployed v1 failed the job on a version it never deployed; once `sync watch` had
    put v2 on the hosts, the step passed while v1, the job's version, was no longer what they served.
    It now passes `--version` from the workspace (the version the job promoted or rolled back to)."""
    env = deploy_env
    env.add_host()
    v1 = env.release("a")
    v2 = env.register("b")
    env.promote(v2)                     # someone promoted v2 after this job's deploy of v1
    run_env = {**env.env, "MLOPS_HOSTS_FILE": str(env.hosts_file)}
    for job in ("promote-and-deploy", "rollback-and-deploy"):
        p = _smoke_step(tmp_path / f"{job}-1", job, v1, run_env)
        assert p.returncode == 0, (job, p.stdout + p.stderr)
        assert f"label: stable -> {v1};" in p.stdout, (job, p.stdout)
        junit = (tmp_path / f"{job}-1" / "work" / "reports" / "junit" / "smoke.xml").read_text()
        assert f'"smoke.{env.model}.v{v1}"' in junit, junit     # what CircleCI's Tests tab shows
    r = env.deploy()                    # ... and `sync watch` put it on the hosts
    assert r.status == "deployed", r.message
    for job in ("promote-and-deploy", "rollback-and-deploy"):
        p = _smoke_step(tmp_path / f"{job}-2", job, v1, run_env)
        assert p.returncode == 2, (job, p.stdout + p.stderr)
        assert "label" in p.stdout + p.stderr and f"v{v2}" in p.stdout + p.stderr, (job, p.stdout + p.stderr)


def test_a_rollback_reason_starting_with_a_dash_is_the_reason_not_an_option(deploy_env, tmp_path):
    """Found by review (twenty-first stop): the rollback step passed ``--reason "$ROLLBACK_REASON"``,
    so a one-word reason starting with ``-`` ("-broken", "--hotfix") was read as an option: the job
    failed with a usage error, production stayed on the version the person on call was rolling back.
    Each value now goes with its flag (``--reason=...``, ``--to=...``); the real mlops rolls back and
    the ledger records the reason as typed."""
    import json
    import os

    env = deploy_env
    env.add_host()
    v1 = env.release("a")
    v2 = env.release("b")
    ci = LocalCircleCI(tmp_path / "ci", parameters={"run-rollback": True, "rollback-reason": "-broken"})
    steps = ci._expand(ci.config["jobs"]["rollback-and-deploy"]["steps"])     # noqa: SLF001
    (spec,) = [s["run"] for s in steps if isinstance(s, dict) and "run" in s and isinstance(s["run"], dict)
               and s["run"].get("name") == "Move production back"]
    work = tmp_path / "work"
    (work / ".venv" / "bin").mkdir(parents=True)
    (work / ".venv" / "bin" / "mlops").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m mlops "$@"\n')
    (work / ".venv" / "bin" / "mlops").chmod(0o755)
    (work / ".venv" / "bin" / "python").symlink_to(sys.executable)
    step_env = {**os.environ, **env.env, "MLOPS_HOSTS_FILE": str(env.hosts_file),
                **{k: env_value(v) for k, v in (spec.get("environment") or {}).items()}}
    p = subprocess.run(["bash", "-eo", "pipefail", "-c", spec["command"]], cwd=work, env=step_env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads((work / "reports" / "rollback.json").read_text())["to_version"] == v1
    assert (work / "workspace" / "version").read_text().strip() == str(v1)
    assert env.production() == v1 != v2
    (row,) = [r for r in env.ledger() if r.action == "rollback"]
    assert row.reason == "-broken", row


INCOMING_CHECK = ("Check the variables of the mlops-tracking context (MLOPS_INCOMING, unless the pipeline "
                  "gives incoming)")


def test_a_retrain_with_nowhere_to_read_batches_from_says_so_before_installing(tmp_path, config):
    """Found by review (twenty-first stop): a retrain pipeline without the ``incoming`` parameter
    whose context lacked MLOPS_INCOMING restored the cache, installed the dependencies (minutes on a
    cold cache) and only then ran ``mlops retrain --incoming ""``, refused with a line about the
    flag's value that said nothing of the context. It now stops right after the context's check,
    one line naming the variable, its context and the parameter that replaces it."""
    tracking = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "MLOPS_LEDGER_URL": f"sqlite:///{tmp_path / 'l.db'}",
                "MLOPS_MODEL_NAME": "ci-model"}
    ci = LocalCircleCI(tmp_path / "run", parameters={"run-retrain": True}, contexts={"mlops-tracking": tracking},
                       skip_jobs=set(ci_jobs(config)) - {"retrain"}, step_timeout=120,
                       project_env={"TF_CPP_MIN_LOG_LEVEL": "3"})
    res = ci.run_workflow("retrain-deploy")
    result = res.jobs["retrain"]
    assert result.status == "failed", res.log()
    ran = [s for s in result.steps if not s.skipped]
    failed = next(s for s in ran if s.returncode != 0)
    assert failed.returncode == 2 and failed.output.strip() == (
        "error: MLOPS_INCOMING is not set in this job and the pipeline has no incoming parameter: add it to the "
        "CircleCI context mlops-tracking (Organization Settings > Contexts) and rerun the workflow, or trigger "
        "the pipeline with the parameter incoming (s3://bucket/prefix); nothing was done"), failed
    before = [s.name for s in ran[:ran.index(failed)]]
    assert before[0] == "checkout" and all(n.startswith("Check the variables of") for n in before[1:]), before
    after = [s.name for s in ran[ran.index(failed) + 1:]]
    assert "Notify on failure" in after and set(after) <= {"Notify on failure", "store_artifacts",
                                                           "store_test_results"}, after
    # either source is enough: the check passes (and says nothing) with one of them
    import os

    for params, env in (({"run-retrain": True, "incoming": "s3://b/new"}, {}),
                        ({"run-retrain": True}, {"MLOPS_INCOMING": "s3://b/ctx"})):
        ci = LocalCircleCI(tmp_path / "ok", parameters=params)
        (spec,) = [s["run"] for s in ci._expand(ci.config["jobs"]["retrain"]["steps"])      # noqa: SLF001
                   if isinstance(s, dict) and "run" in s and isinstance(s["run"], dict)
                   and s["run"].get("name") == INCOMING_CHECK]
        step_env = {"PATH": os.environ["PATH"], **env,
                    **{k: env_value(v) for k, v in (spec.get("environment") or {}).items()}}
        p = subprocess.run(["bash", "-eo", "pipefail", "-c", spec["command"]], env=step_env, capture_output=True,
                           text=True, timeout=30)
        assert (p.returncode, p.stdout + p.stderr) == (0, ""), (params, env, p.stderr)


def test_a_garbled_host_key_pin_stops_a_deploy_job_before_its_install(tmp_path, config):
    """Found by review (twenty-first stop), with the retrain's MLOPS_INCOMING: the deploy jobs pinned
    the serving hosts' keys (MLOPS_KNOWN_HOSTS, checked line by line) only after installing the
    dependencies, so a garbled pin in the context cost the install before its one line. The pins
    now come right after the contexts' checks."""
    full = {"mlops-tracking": {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
                               "MLOPS_LEDGER_URL": f"sqlite:///{tmp_path / 'l.db'}", "MLOPS_MODEL_NAME": "ci-model"},
            "mlops-deploy": {"CIRCLE_TOKEN": "ci-token", "MLOPS_HOSTS_FILE": str(tmp_path / "hosts.toml"),
                             "MLOPS_KNOWN_HOSTS": "serving-1 not-a-key-type garbled"}}
    for wf, job in (("build-deploy", "promote-and-deploy"), ("rollback", "rollback-and-deploy")):
        ci = LocalCircleCI(tmp_path / job, parameters=_WORKFLOW_PARAMETERS[wf], contexts=full,
                           skip_jobs=set(ci_jobs(config)) - {job}, step_timeout=120)
        res = ci.run_workflow(wf, approve=lambda j, w: "alice")
        result = res.jobs[job]
        assert result.status == "failed", res.log()
        ran = [s for s in result.steps if not s.skipped]
        failed = next(s for s in ran if s.returncode != 0)
        assert failed.name == "Pin serving host keys" and "line 1 of MLOPS_KNOWN_HOSTS" in failed.output, failed
        before = [s.name for s in ran[:ran.index(failed)]]
        assert before[0] == "checkout" and set(before[1:]) <= {
            "Check the variables of the mlops-tracking context", "Check the variables of the mlops-deploy context",
            "add_ssh_keys"}, (job, before)


def _notify_command(config) -> str:
    (step,) = config["commands"]["notify-on-failure"]["steps"]
    assert step["run"]["when"] == "on_fail", step
    return step["run"]["command"]


def test_the_notify_step_is_the_notify_script_inline(config):
    """The notify step cannot run a file of the checkout (a failed checkout leaves none): its
    command is scripts/notify-failure.sh's text after the #! line, tested there."""
    script = (REPO / "scripts" / "notify-failure.sh").read_text()
    assert _notify_command(config) == script.split("\n", 1)[1]
    for name, job in config["jobs"].items():      # every job's last step, whatever failed before it
        last = job["steps"][-1]
        assert last == "notify-on-failure", (name, last)


def test_a_job_whose_checkout_failed_still_tells_slack(tmp_path, config):
    """Found by review (twenty-first stop): the notify step ran `scripts/notify-failure.sh`, a file of
    the checkout. CircleCI runs an `on_fail` step after a failed checkout too, where that file does
    not exist: "No such file or directory", and nobody was told the job failed. Every job with a
    context now posts to SLACK_WEBHOOK_URL from an empty folder, the URL in no output."""
    from tests.lab.receiver import post_receiver

    got: list[tuple[str, bytes]] = []

    def answer(path: str, headers: dict, body: bytes) -> int:
        got.append((path, body))
        return 200

    found = _jobs_with_contexts(config)
    assert len(found) >= 6, found
    with post_receiver(answer) as base:
        hook = f"{base}/services/T0KEN-ci"
        contexts = {"mlops-tracking": {"SLACK_WEBHOOK_URL": hook}, "mlops-deploy": {}}
        for i, (wf, job, _) in enumerate(found):
            ci = LocalCircleCI(tmp_path / f"run-{i}", parameters=_WORKFLOW_PARAMETERS[wf], contexts=contexts,
                               skip_jobs=set(ci_jobs(config)) - {job}, failing_checkout=True, step_timeout=60)
            res = ci.run_workflow(wf, approve=lambda j, w: "alice")
            result = res.jobs[job]
            assert result.status == "failed", res.log()
            ran = [s for s in result.steps if not s.skipped]
            assert [s.name for s in ran if s.name not in ("store_artifacts", "store_test_results")] == [
                "checkout", "Notify on failure"], (job, res.log())
            notify = ran[-1]
            assert (notify.returncode, notify.output.strip()) == (0, "failure notification sent"), (job, notify)
            assert "T0KEN" not in result.output, result.output
            assert len(got) == i + 1 and got[-1][0] == "/services/T0KEN-ci", got
            assert f"job {job} failed" in got[-1][1].decode(), got[-1]
        # curl failing (nothing listens) is said, not a silent exit under `bash -eo pipefail`
        contexts["mlops-tracking"]["SLACK_WEBHOOK_URL"] = "http://127.0.0.1:9/services/T0KEN-ci"
        wf, job, _ = found[0]
        res = LocalCircleCI(tmp_path / "unreachable", parameters=_WORKFLOW_PARAMETERS[wf], contexts=contexts,
                            skip_jobs=set(ci_jobs(config)) - {job}, failing_checkout=True,
                            step_timeout=60).run_workflow(wf, approve=lambda j, w: "alice")
        notify = [s for s in res.jobs[job].steps if s.name == "Notify on failure"][0]
        assert (notify.returncode, notify.output.strip()) == (
            0, "could not send the failure notification (webhook unreachable or refused: curl exit 7)"), notify
