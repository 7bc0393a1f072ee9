"""Run a workflow of .circleci/config.yml on this machine — a test tool, not a CI product.

It supports exactly the subset of CircleCI 2.1 that this project's config uses and fails loudly
on anything else, so the config cannot silently drift away from what the tests exercise:

- pipeline parameters and values (``<< pipeline.parameters.x >>``, ``pipeline.git.branch``,
  ``pipeline.trigger_source``, ``pipeline.id``, ``pipeline.number``, ``pipeline.project.slug``),
  workflow ``when`` logic
  statements (``and``/``or``/``not``/``equal``),
- jobs in dependency order (``requires``), contexts (given by the test as env dicts), approval
  jobs that wait for an explicit approval from the test, jobs the test names in ``skip_jobs``
  recorded as passed without running (the ``test`` job runs this very suite: ``bash .ci/run``),
- executors (their ``environment``; images are not pulled), reusable ``commands`` (string
  parameters: ``<< parameters.x >>``), and the steps ``checkout``, ``run`` (bash ``-eo pipefail``, ``when``,
  ``environment``, ``$BASH_ENV``; an empty ``environment`` value reaches the job as ``<nil>``, as on
  CircleCI: ``env_value``), ``restore_cache``/``save_cache`` (no-ops: the venv is shared),
  ``persist_to_workspace``/``attach_workspace`` (a folder), ``store_artifacts``,
  ``store_test_results`` (copied, after a failed step too, as on CircleCI), ``add_ssh_keys``
  (installs the test's deploy key in ``~/.ssh``).

Each job gets a fresh checkout (tracked and untracked-but-not-ignored files, with ``.venv``
linked) and a fresh ``HOME``, like a fresh CircleCI container; ``failing_checkout`` makes every
checkout fail (a fetch refused, a network cut), leaving the job's folder empty.
"""
from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

REPO = Path(__file__).resolve().parents[2]

SUPPORTED_TOP = {"version", "parameters", "executors", "commands", "jobs", "workflows"}
SUPPORTED_JOB = {"executor", "docker", "machine", "resource_class", "environment", "steps",
                 "working_directory", "description"}
# serial-group: accepted, and nothing to do here: the harness runs one pipeline at a time
SUPPORTED_WF_JOB = {"requires", "context", "type", "name", "filters", "serial-group"}
SUPPORTED_RUN = {"name", "command", "when", "environment", "no_output_timeout", "working_directory"}
BUILTIN_STEPS = {"checkout", "run", "restore_cache", "save_cache", "persist_to_workspace",
                 "attach_workspace", "store_artifacts", "store_test_results", "add_ssh_keys"}
_VALUE = re.compile(r"<<\s*([\w.-]+)\s*>>")


class Unsupported(Exception):
    """The config uses something this harness does not implement."""


@dataclass
class StepResult:
    name: str
    returncode: int
    output: str
    skipped: bool = False


@dataclass
class JobResult:
    name: str
    status: str  # success | failed | blocked | approved | on_hold
    steps: list[StepResult] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def output(self) -> str:
        return "\n".join(f"--- {s.name} (rc={s.returncode})\n{s.output}" for s in self.steps)


@dataclass
class WorkflowResult:
    name: str
    jobs: dict[str, JobResult]
    workspace: Path
    artifacts: Path
    order: list[str]

    def status(self, job: str) -> str | None:
        return self.jobs[job].status if job in self.jobs else None

    def log(self) -> str:
        return "\n".join(f"=== {j}: {r.status}\n{r.output}" for j, r in self.jobs.items())


def load_config(path: Path = REPO / ".circleci" / "config.yml") -> dict:
    config = yaml.safe_load(Path(path).read_text())
    unknown = set(config) - SUPPORTED_TOP
    if unknown:
        raise Unsupported(f"top-level keys not supported by the local harness: {sorted(unknown)}")
    if str(config.get("version")) != "2.1":
        raise Unsupported("only config version 2.1 is supported")
    return config


def _typed_param_defaults(config: dict, given: dict) -> dict:
    params = {}
    declared = config.get("parameters", {})
    for name in given:
        if name not in declared:
            raise Unsupported(f"unknown pipeline parameter '{name}'")
    for name, spec in declared.items():
        value = given.get(name, spec.get("default"))
        kind = spec.get("type")
        if kind == "boolean" and not isinstance(value, bool):
            raise Unsupported(f"parameter {name} must be a boolean")
        if kind == "enum" and value not in spec.get("enum", []):
            raise Unsupported(f"parameter {name}={value!r} not in {spec.get('enum')}")
        params[name] = value
    return params


def _later(key: str, values: dict) -> bool:
    """A command's ``<< parameters.x >>``, left for ``_expand`` when pipeline values go in."""
    return key.startswith("parameters.") and not any(k.startswith("parameters.") for k in values)


def substitute(obj, values: dict):
    """Replace ``<< name >>`` pipeline values: a whole-string reference keeps its type."""
    if isinstance(obj, dict):
        return {k: substitute(v, values) for k, v in obj.items()}
    if isinstance(obj, list):
        return [substitute(v, values) for v in obj]
    if isinstance(obj, str):
        whole = _VALUE.fullmatch(obj.strip())
        if whole:
            key = whole.group(1)
            if key not in values:
                if _later(key, values):
                    return obj
                raise Unsupported(f"unknown pipeline value << {key} >>")
            return values[key]

        def repl(m):
            key = m.group(1)
            if key not in values:
                if _later(key, values):
                    return m.group(0)
                raise Unsupported(f"unknown pipeline value << {key} >>")
            v = values[key]
            return ("true" if v else "false") if isinstance(v, bool) else str(v)

        return _VALUE.sub(repl, obj)
    return obj


# CircleCI runs these even after a failed step (its configuration reference: they take no `when`
# and are always executed); a failed gate job's report and JUnit file are what a person reads.
ALWAYS_RUN = ("store_artifacts", "store_test_results")


def env_value(value) -> str:
    """An ``environment`` value as CircleCI hands it to the job. An empty one (an empty string
    pipeline parameter substituted into it, an absent pipeline value) arrives as the text ``<nil>``,
    not as an empty string: CircleCI's "Project values and variables" page says so, and tells to set
    the variable in a shell command for an empty string."""
    return "<nil>" if value is None or value == "" else str(value)


def evaluate_when(cond) -> bool:
    """CircleCI logic statements: literals, and/or/not/equal."""
    if isinstance(cond, bool):
        return cond
    if isinstance(cond, (int, float)):
        return bool(cond)
    if isinstance(cond, str):
        return cond not in ("", "false")
    if cond is None:
        return False
    if isinstance(cond, dict) and len(cond) == 1:
        (op, arg), = cond.items()
        if op == "and":
            return all(evaluate_when(c) for c in arg)
        if op == "or":
            return any(evaluate_when(c) for c in arg)
        if op == "not":
            return not evaluate_when(arg)
        if op == "equal":
            return all(a == arg[0] for a in arg[1:])
    raise Unsupported(f"logic statement not supported: {cond!r}")


def expand_steps(config: dict, steps: list) -> list:
    """``steps`` with the config's reusable ``commands`` inlined (string parameters substituted)."""
    out = []
    for step in steps:
        name = step if isinstance(step, str) else next(iter(step))
        if name in BUILTIN_STEPS:
            out.append(step)
            continue
        command = config.get("commands", {}).get(name)
        if command is None:
            raise Unsupported(f"step '{name}' is neither built in nor a defined command")
        declared = command.get("parameters") or {}
        given = (step[name] or {}) if isinstance(step, dict) else {}
        unknown = set(given) - set(declared)
        if unknown:
            raise Unsupported(f"command '{name}' has no parameters {sorted(unknown)}")
        if any(spec.get("type", "string") != "string" for spec in declared.values()):
            raise Unsupported(f"only string command parameters are supported ('{name}')")
        values = {}
        for p, spec in declared.items():
            if p not in given and "default" not in spec:
                raise Unsupported(f"command '{name}' needs parameter '{p}'")
            values[f"parameters.{p}"] = str(given.get(p, spec.get("default")))
        out.extend(expand_steps(config, substitute(command["steps"], values) if values else command["steps"]))
    return out


def pipeline_values(config: dict, parameters: dict | None, *, pipeline_id: str, number: int = 1,
                    branch: str = "main", trigger_source: str = "webhook") -> dict:
    """The pipeline values and parameters (``pipeline.parameters.x``: given, else its default) a
    pipeline of ``config`` substitutes at compile time."""
    params = _typed_param_defaults(config, parameters or {})
    values = {f"pipeline.parameters.{k}": v for k, v in params.items()}
    values.update({"pipeline.git.branch": branch, "pipeline.trigger_source": trigger_source,
                   "pipeline.id": pipeline_id, "pipeline.number": number,
                   "pipeline.git.revision": "local", "pipeline.project.git_url": str(REPO),
                   "pipeline.project.slug": f"local/local/{REPO.name}"})
    return values


def compiled_config(substituted: dict) -> str:
    """A pipeline's configuration as CircleCI's ``GET /api/v2/pipeline/{id}/config`` returns it in
    ``compiled``: the processed config (``version: 2``, no pipeline ``parameters``, reusable
    commands inlined into each job's steps), the pipeline's values and parameters substituted
    (``substituted``: ``substitute(load_config(), pipeline_values(...))``)."""
    jobs = {name: {**job, "steps": expand_steps(substituted, job.get("steps") or [])}
            for name, job in (substituted.get("jobs") or {}).items()}
    out = {"version": 2, "jobs": jobs, "workflows": {"version": 2, **(substituted.get("workflows") or {})}}
    return yaml.safe_dump(out, sort_keys=False, width=100000)


class LocalCircleCI:
    """Run workflows of one pipeline. ``contexts`` maps context name -> env dict."""

    _build_num = itertools.count(1)

    def __init__(self, root: Path, *, parameters: dict | None = None, branch: str = "main",
                 trigger_source: str = "webhook", contexts: dict[str, dict] | None = None,
                 project_env: dict[str, str] | None = None, ssh_key: Path | None = None,
                 config_path: Path = REPO / ".circleci" / "config.yml", step_timeout: float = 900,
                 skip_jobs: frozenset[str] | set[str] = frozenset(), failing_checkout: bool = False):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.config = load_config(config_path)
        self.pipeline_id = str(uuid.uuid4())
        self.pipeline_number = next(self._build_num)
        values = pipeline_values(self.config, parameters, pipeline_id=self.pipeline_id,
                                 number=self.pipeline_number, branch=branch, trigger_source=trigger_source)
        self.values = values
        self.config = substitute(self.config, values)
        self.contexts = contexts or {}
        self.project_env = project_env or {}
        self.ssh_key = ssh_key
        self.step_timeout = step_timeout
        self.skip_jobs = frozenset(skip_jobs)
        self.failing_checkout = failing_checkout     # every checkout fails, leaving an empty folder

    # ---- selection -------------------------------------------------------------------------
    def workflows(self) -> list[str]:
        """Names of the workflows this pipeline would run."""
        selected = []
        for name, wf in self.config["workflows"].items():
            if "when" not in wf or evaluate_when(wf["when"]):
                selected.append(name)
        return selected

    # ---- running ----------------------------------------------------------------------------
    def run_workflow(self, name: str, *,
                     approve: Callable[[str, str], str | None] = lambda job, workflow_id: None,
                     on_start: Callable[[str, list[str]], None] | None = None,
                     on_job: Callable[[str, JobResult], None] | None = None) -> WorkflowResult:
        """Run workflow ``name``. ``approve(job, workflow_id)`` returns the approver's login, or
        None to leave the approval on hold (the workflow then stops there, as on CircleCI).
        ``on_start(workflow_id, job_names)`` lets a test register the workflow elsewhere (e.g. with
        a local CircleCI-like API) before the first job runs."""
        wf = self.config["workflows"][name]
        entries = self._workflow_jobs(wf)
        workflow_id = str(uuid.uuid4())
        base = self.root / f"{name}-{workflow_id[:8]}"
        workspace, artifacts = base / "workspace", base / "artifacts"
        workspace.mkdir(parents=True)
        artifacts.mkdir()
        results: dict[str, JobResult] = {}
        order = self._topological(entries)
        if on_start:
            on_start(workflow_id, order)
        for job_name in order:
            entry = entries[job_name]
            if any(results.get(r) is None or results[r].status not in ("success", "approved")
                   for r in entry.get("requires", [])):
                results[job_name] = JobResult(job_name, "blocked")
                continue
            if entry.get("job") in self.skip_jobs:
                results[job_name] = JobResult(job_name, "success", steps=[
                    StepResult("skipped by the local harness (skip_jobs)", 0, "", skipped=True)])
            elif entry.get("type") == "approval":
                who = approve(job_name, workflow_id)
                results[job_name] = JobResult(job_name, "approved" if who else "on_hold",
                                              env={"approved_by": who or ""})
            else:
                results[job_name] = self._run_job(job_name, entry, workflow_id, base, workspace,
                                                  artifacts)
            if on_job:
                on_job(job_name, results[job_name])
        return WorkflowResult(name, results, workspace, artifacts, order)

    def _workflow_jobs(self, wf: dict) -> dict[str, dict]:
        entries = {}
        for item in wf["jobs"]:
            if isinstance(item, str):
                job, spec = item, {}
            else:
                (job, spec), = item.items()
                spec = spec or {}
            unknown = set(spec) - SUPPORTED_WF_JOB
            if unknown:
                raise Unsupported(f"workflow job keys not supported: {sorted(unknown)}")
            if "filters" in spec:
                raise Unsupported("job filters are not supported by the local harness")
            name = spec.get("name", job)
            if spec.get("type") != "approval" and job not in self.config["jobs"]:
                raise Unsupported(f"workflow uses undefined job '{job}'")
            entries[name] = {**spec, "job": job}
        for name, spec in entries.items():
            for req in spec.get("requires", []):
                if req not in entries:
                    raise Unsupported(f"job '{name}' requires '{req}', which is not in the workflow")
        return entries

    @staticmethod
    def _topological(entries: dict[str, dict]) -> list[str]:
        order, done = [], set()
        pending = list(entries)
        for _ in range(len(entries) + 1):
            for name in list(pending):
                if all(r in done for r in entries[name].get("requires", [])):
                    order.append(name)
                    done.add(name)
                    pending.remove(name)
        if pending:
            raise Unsupported(f"dependency cycle among {pending}")
        return order

    def _job_env(self, job: dict, entry: dict, job_name: str, workflow_id: str, home: Path,
                 project: Path) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "HOME": str(home),
               "SHELL": "/bin/bash", "USER": os.environ.get("USER", "root")}
        build_num = next(self._build_num)
        env.update({"CI": "true", "CIRCLECI": "true", "CIRCLE_JOB": job_name,
                    "CIRCLE_BUILD_NUM": str(build_num), "CIRCLE_BRANCH": self.values["pipeline.git.branch"],
                    "CIRCLE_PIPELINE_ID": self.pipeline_id, "CIRCLE_WORKFLOW_ID": workflow_id,
                    "CIRCLE_WORKFLOW_JOB_ID": str(uuid.uuid4()), "CIRCLE_SHA1": "local",
                    "CIRCLE_WORKING_DIRECTORY": str(project),
                    "CIRCLE_BUILD_URL": f"http://localhost/job/{build_num}"})
        env.update(self.project_env)
        for ctx in entry.get("context", []) or []:
            if ctx not in self.contexts:
                raise Unsupported(f"context '{ctx}' was not provided to the local harness")
            env.update(self.contexts[ctx])
        executor = job.get("executor")
        if executor:
            ex = self.config.get("executors", {}).get(executor)
            if ex is None:
                raise Unsupported(f"undefined executor '{executor}'")
            env.update({k: env_value(v) for k, v in (ex.get("environment") or {}).items()})
        env.update({k: env_value(v) for k, v in (job.get("environment") or {}).items()})
        # Executors' paths refer to CircleCI's machine; map its home to the job's.
        for k, v in list(env.items()):
            env[k] = v.replace("/home/circleci/project", str(project)).replace("/home/circleci", str(home))
        return env

    def compiled(self) -> str:
        """This pipeline's configuration as CircleCI's API returns it compiled (``compiled_config``)."""
        return compiled_config(self.config)

    def _expand(self, steps: list) -> list:
        return expand_steps(self.config, steps)

    def _run_job(self, job_name: str, entry: dict, workflow_id: str, base: Path, workspace: Path,
                 artifacts: Path) -> JobResult:
        job = self.config["jobs"][entry["job"]]
        unknown = set(job) - SUPPORTED_JOB
        if unknown:
            raise Unsupported(f"job keys not supported: {sorted(unknown)}")
        jdir = base / job_name
        home, project = jdir / "home", jdir / "project"
        home.mkdir(parents=True)
        project.mkdir()
        env = self._job_env(job, entry, job_name, workflow_id, home, project)
        bash_env = jdir / "bash_env"
        bash_env.touch()
        env["BASH_ENV"] = str(bash_env)
        result = JobResult(job_name, "success", env=env)
        failed = False
        for step in self._expand(job["steps"]):
            kind = step if isinstance(step, str) else next(iter(step))
            spec = {} if isinstance(step, str) else (step[kind] or {})
            if kind == "run":
                spec = {"command": spec} if isinstance(spec, str) else spec
                unknown = set(spec) - SUPPORTED_RUN
                if unknown:
                    raise Unsupported(f"run keys not supported: {sorted(unknown)}")
                when = spec.get("when", "on_success")
                if (when == "on_success" and failed) or (when == "on_fail" and not failed):
                    result.steps.append(StepResult(spec.get("name", "run"), 0, "", skipped=True))
                    continue
                step_env = {**env, **{k: env_value(v) for k, v in (spec.get("environment") or {}).items()}}
                sr = self._bash(spec.get("name", spec["command"].splitlines()[0]), spec["command"],
                                step_env, project)
            elif failed and kind not in ALWAYS_RUN:
                sr = StepResult(kind, 0, "", skipped=True)
            else:
                sr = self._builtin(kind, spec, project, home, workspace, artifacts / job_name)
            result.steps.append(sr)
            if sr.returncode != 0:
                failed = True
        result.status = "failed" if failed else "success"
        return result

    def _bash(self, name: str, command: str, env: dict, cwd: Path) -> StepResult:
        try:
            p = subprocess.run(["/bin/bash", "-eo", "pipefail", "-c", command], cwd=cwd, env=env,
                               capture_output=True, text=True, timeout=self.step_timeout)
            return StepResult(name, p.returncode, p.stdout + p.stderr)
        except subprocess.TimeoutExpired as exc:
            return StepResult(name, 124, f"step timed out after {self.step_timeout}s\n{exc.stdout or ''}")

    def _builtin(self, kind: str, spec: dict, project: Path, home: Path, workspace: Path,
                 artifacts: Path) -> StepResult:
        if kind == "checkout":
            if self.failing_checkout:
                return StepResult("checkout", 1, "error: the checkout failed (failing_checkout), nothing was written")
            files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                                   capture_output=True, check=True).stdout.decode().split("\0")
            for rel in filter(None, files):
                src = REPO / rel
                if src.is_file():
                    (project / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, project / rel)  # keep mtimes: make sees the venv as current
            if (REPO / ".venv").exists():
                (project / ".venv").symlink_to(REPO / ".venv")
            return StepResult("checkout", 0, f"checked out {len(files)} files")
        if kind in ("restore_cache", "save_cache"):
            return StepResult(kind, 0, "cache is a no-op locally (the venv is shared)")
        if kind == "persist_to_workspace":
            root = project / spec["root"]
            for rel in spec["paths"]:
                src = root / rel
                if not src.exists():
                    return StepResult(kind, 1, f"persist_to_workspace: {src} does not exist")
                dest = workspace / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                (shutil.copytree(src, dest, dirs_exist_ok=True) if src.is_dir() else shutil.copy2(src, dest))
            return StepResult(kind, 0, f"persisted {spec['paths']}")
        if kind == "attach_workspace":
            shutil.copytree(workspace, project / spec["at"], dirs_exist_ok=True)
            return StepResult(kind, 0, f"attached at {spec['at']}")
        if kind in ("store_artifacts", "store_test_results"):
            src = project / spec["path"]
            dest = artifacts / kind / spec["path"]
            if src.exists():
                (shutil.copytree(src, dest, dirs_exist_ok=True) if src.is_dir() else
                 (dest.parent.mkdir(parents=True, exist_ok=True), shutil.copy2(src, dest)))
            return StepResult(kind, 0, f"stored {spec['path']}" if src.exists() else "nothing to store")
        if kind == "add_ssh_keys":
            if not spec.get("fingerprints"):
                raise Unsupported("add_ssh_keys must list fingerprints")
            if self.ssh_key is None:
                return StepResult(kind, 0, "no deploy key given to the local harness")
            ssh = home / ".ssh"
            ssh.mkdir(mode=0o700, exist_ok=True)
            pub = subprocess.run(["ssh-keygen", "-y", "-f", str(self.ssh_key)], capture_output=True,
                                 text=True).stdout
            name = "id_ed25519" if pub.startswith("ssh-ed25519") else "id_rsa"
            shutil.copy2(self.ssh_key, ssh / name)
            os.chmod(ssh / name, 0o600)
            return StepResult(kind, 0, f"installed the deploy key as ~/.ssh/{name}")
        raise Unsupported(f"step '{kind}' not supported")
