"""The quick start: the whole flow on the embedded default, as the CircleCI pipeline runs it.

Local MLflow server + local TF-Serving-compatible server (a ``file://`` serving host), then:
train v1 → gate → approval → promote → deploy (smoke-tested) and, unless ``--quick``, the
retraining story: v2 on a good batch is approved and deployed (v1 kept warm for an instant
rollback), v3 on the tutorial's bad batch is stopped by the gate. Every step calls the same
functions as the ``mlops`` commands and the CircleCI jobs.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mlops_common import settings
from mlops_common.errors import ConfigError, GateFailed, UserError

DEFAULT_REST_PORT = settings.DEFAULT_REST_PORT
DEFAULT_GRPC_PORT = settings.DEFAULT_GRPC_PORT


@dataclass
class DemoOptions:
    yes: bool = False            # approve without asking
    quick: bool = False          # only v1
    epochs: int = 10
    dataset: str = "digits"


def say(text: str = "") -> None:
    print(text, flush=True)


def step(n: int, text: str) -> float:
    say(f"\n[{n}] {text}")
    return time.monotonic()


def _ports() -> tuple[int, int]:
    return (settings.port_env("MLOPS_SERVING_REST_PORT", DEFAULT_REST_PORT),
            settings.port_env("MLOPS_SERVING_GRPC_PORT", DEFAULT_GRPC_PORT))


HOSTS_MARK = "# Written by `mlops demo`"
# what the user's shell may set for another MLflow server, which the demo's own server must not take
DEMO_IGNORES = ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID")


def hosts_toml(base: Path, rest_url: str, grpc: str) -> str:
    """The embedded default's hosts file: one ``file://`` host served by the local server. The path
    is percent-quoted: a state folder with ``#``, ``?`` or ``%41`` in its path was read back as a
    fragment, a query or another folder, and one with ``"`` or ``\\`` was not TOML."""
    from urllib.parse import quote

    return (f"{HOSTS_MARK}: the embedded default's one serving host.\n"
            "[[hosts]]\n"
            'name = "local"\n'
            f'target = "file://{quote(str(base))}"\n'
            f'rest_url = "{rest_url}"\n'
            f'grpc = "{grpc}"\n')


def check_hosts_file(path: Path) -> None:
    """Refuse (one line, before anything starts) to overwrite a hosts file the demo did not write:
    ``$MLOPS_HOME/hosts.toml`` is also where ``mlops sync`` looks for a person's own hosts."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            first = f.readline()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"cannot read {path} ({exc.strerror or exc}); point MLOPS_HOME at a folder you "
                          f"can write") from None
    if not first.startswith(HOSTS_MARK):
        raise ConfigError(f"{path} was not written by `mlops demo` (it names your own hosts) and the demo "
                          f"would replace it: run the demo with another MLOPS_HOME, or move that file")


@contextlib.contextmanager
def one_demo_at_a_time(state: Path):
    """An exclusive ``flock`` on ``$MLOPS_HOME/demo.lock`` for the whole flow: two demos on one
    state folder would train, promote and deploy into each other's story. Released when the
    process ends, however it ends."""
    import fcntl

    from mlops.detached_service import open_in_state

    with open_in_state(state, "demo.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ConfigError(f"another `mlops demo` is running on {state}; wait for it to finish, or run "
                              f"this one with another MLOPS_HOME") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def start_services(state: Path) -> dict:
    """MLflow and the local model server (reused when already running), and the hosts file."""
    from mlops.detached_service import read_record, refuse_taken_ports, write_whole
    from mlops.local_services import start_mlflow, start_model_server

    hosts = state / "hosts.toml"
    check_hosts_file(hosts)
    rest_port, grpc_port = _ports()
    # the model server's ports before MLflow starts: one another program holds stopped the demo after
    # MLflow had started, and left it running
    refuse_taken_ports(read_record(state, "model-server"),
                        {rest_port: "MLOPS_SERVING_REST_PORT", grpc_port: "MLOPS_SERVING_GRPC_PORT"}, state=state)
    mlflow_svc = start_mlflow(state, port=settings.local_mlflow_port(), port_setting="MLOPS_MLFLOW_PORT")  # no --port
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_svc.url  # the demo always runs on the embedded default
    os.environ.pop("MLOPS_LEDGER_URL", None)    # its ledger too: $MLOPS_HOME/ledger.db, never a team's
    # and its experiment: a shell's MLFLOW_EXPERIMENT_ID (or _NAME, or a leftover MLFLOW_RUN_ID), meant
    # for the team's server, stopped the demo's training ("No Experiment with id=7 exists") or filed
    # its runs under another experiment than the model's
    for name in DEMO_IGNORES:
        os.environ.pop(name, None)
    base = state / "serving"
    model_svc = start_model_server(state, base, rest_port=rest_port, grpc_port=grpc_port)
    write_whole(hosts, hosts_toml(base, model_svc.url, f"127.0.0.1:{grpc_port}"))
    os.environ["MLOPS_HOSTS_FILE"] = str(hosts)
    _no_proxy_to_loopback()
    return {"mlflow": mlflow_svc.url, "serving": model_svc.url, "hosts": hosts, "base": base}


def _no_proxy_to_loopback() -> None:
    """127.0.0.1 in NO_PROXY for the rest of the flow: every request of the demo (MLflow's client,
    the deploy's REST and gRPC calls) goes to its own services on this machine's loopback, which a
    proxy cannot reach. With HTTP_PROXY set and NO_PROXY not naming it (a company network), the
    demo's first request to its own MLflow went to the proxy and failed."""
    for name in ("no_proxy", "NO_PROXY"):       # requests reads the first set; gRPC the lower-case one
        have = os.environ.get(name, "")
        if "127.0.0.1" not in [h.strip() for h in have.split(",")]:
            os.environ[name] = f"{have},127.0.0.1" if have.strip() else "127.0.0.1"


def approve(version: int, opts: DemoOptions) -> bool:
    """The CircleCI `hold` job, locally: a prompt, or --yes."""
    if opts.yes:
        say(f"    approved v{version} (--yes)")
        return True
    if not sys.stdin.isatty():
        return False
    try:
        answer = input(f"    Approve version {version} for production? Look at the gate report and the "
                       f"runs in the MLflow UI first. [y/N] ").strip().lower()
    except EOFError:        # Ctrl-D: no answer is no approval
        say()
        return False
    return answer in ("y", "yes")


def gate(model: str, version: int) -> tuple[bool, str]:
    from mlops.commands.registry import _evaluator
    from registry.gate import run_gate

    outcome = run_gate(model, version, _evaluator(model))
    return outcome.passed, outcome.summary


def release(model: str, version: int, opts: DemoOptions, n: int, services: dict) -> bool:
    """gate → approval → promote → deploy, as the pipeline does; False when not approved, and
    when the gate stopped it (``GateFailed`` instead for the first version: nothing would serve)."""
    from registry import promotion
    from registry.provenance import Provenance
    from serving_sync.hosts import load_hosts

    step(n, f"quality gate: v{version} vs production on the frozen held-out set")
    passed, summary = gate(model, version)
    say(f"    {summary}")
    if not passed:
        from registry import versions

        if versions.production_version(model) is None:
            raise GateFailed(summary)
        say(f"    v{version} stops here: it is not a candidate and nobody is asked to approve it.")
        return False
    step(n + 1, f"approval (CircleCI's `hold` job): v{version} is the candidate")
    if not approve(version, opts):
        # as this shell reaches `mlops` (`make demo` puts none on PATH), and while the services run: the
        # deploy needs the model server, which only the demo starts (`mlops up` starts MLflow alone)
        m = mlops_command()
        say(f"    not approved. Approve it later, while these services still run (only `mlops demo` starts the "
            f"model server again), with: {m} registry promote --version {version} && {m} sync deploy")
        return False
    step(n + 2, f"promote v{version} to production")
    moved = promotion.promote(model, version, provenance=Provenance.from_environment(),
                              reason="approved in mlops demo")
    was = f"v{moved.from_version}" if moved.from_version is not None else "(none)"
    say(f"    production: {was} -> v{moved.to_version} (ledger #{moved.ledger_id})")
    step(n + 3, "deploy production to the serving host: publish, load, smoke-test, switch")
    result = deploy_production(model, load_hosts(services["hosts"]))
    say(f"    {result.message} in {result.seconds:.1f}s")
    return True


def deploy_production(model: str, hosts):
    """``fleet.deploy`` under ``stop.deferred()``: a SIGTERM / Ctrl-C (``sigterm_as_ctrl_c``, which
    ``mlops.cli`` runs every command under) only asks, and the deploy stops at its next safe
    point, puts the hosts back and raises ``DeployInterrupted``; a KeyboardInterrupt raised wherever the signal landed
    (inside a gRPC call, a worker's wait) left that to chance. A second signal forces it."""
    from mlops_common import stop
    from serving_sync.fleet import deploy

    with stop.deferred():
        return deploy(model, hosts)


def golden_request_file(model: str, version: int, state: Path) -> Path:
    from registry import versions

    bundle = versions.download_bundle(model, version, state / "demo" / f"bundle-{version}")
    path = state / "demo" / "request.json"
    path.write_text(json.dumps(bundle.golden_request))
    return path


def run(opts: DemoOptions) -> dict:
    """The whole flow; returns what it left running."""
    from mlproject.batches import make_batch, write_batch
    from mlproject.datasets import load_partition
    from mlproject.train import TrainParams, retrain, train

    state = settings.state_dir()
    model = settings.model_name()
    t0 = time.monotonic()
    step(1, f"start the local services (state in {state})")
    user_env = dict(os.environ)     # before the demo points the process at its own services
    services = start_services(state)
    say(f"    MLflow UI: {services['mlflow']}   model server (local TF-Serving-compatible): {services['serving']}")

    step(2, f"train and register a new version of '{model}' on {opts.dataset} ({opts.epochs} epochs)")
    params = TrainParams(dataset=opts.dataset, epochs=opts.epochs)
    with contextlib.redirect_stdout(sys.stderr):  # libraries print; stdout is the story
        v1 = train(model, params)["version"]
    say(f"    registered version {v1}")
    served = v1 if release(model, v1, opts, 3, services) else None

    if not opts.quick and served is not None:
        pool = load_partition(opts.dataset).pool
        batches = state / "demo" / "incoming"
        good = write_batch(make_batch("good", pool, seed=1), str(batches / "good" / "batch-001.npz"))
        step(7, "retrain on a good batch of new, correctly labelled data")
        with contextlib.redirect_stdout(sys.stderr):
            v2 = retrain(model, params, good)["version"]
        say(f"    registered version {v2} (retrained from v{v1})")
        if release(model, v2, opts, 8, services):
            served = v2
        bad = write_batch(make_batch("bad", pool, seed=1), str(batches / "bad" / "batch-001.npz"))
        step(12, "retrain on the tutorial's bad batch (labels shuffled)")
        with contextlib.redirect_stdout(sys.stderr):
            v3 = retrain(model, params, bad)["version"]
        say(f"    registered version {v3}")
        release(model, v3, opts, 13, services)

    say(f"\nDone in {time.monotonic() - t0:.0f}s.")
    if served is None:      # a second demo on the same state: its v1 fails against the earlier v2
        from registry import versions

        with contextlib.suppress(UserError):
            served = versions.production_version(model)
    if served is not None:
        from registry.deploys import DeployLedger

        request = golden_request_file(model, served, state)
        back = DeployLedger(model).rollback_target()
        say(closing_text(services, model, served, request, back,
                         warm=back is not None and back in available_versions(services["serving"], model),
                         mlops=mlops_command(), shell_env=foreign_settings(user_env, services),
                         quick=opts.quick))
    return {"services": services, "served": served, "model": model}


def available_versions(serving: str, model: str) -> set[int]:
    """The versions of ``model`` the model server has AVAILABLE (TF Serving's status API); empty
    when it cannot say. The closing text promises an instant rollback only to one of them: a run
    whose deploy failed or was stopped left the previous version unloaded."""
    from serving_sync.tfs_client import TFServingClient

    try:
        statuses = TFServingClient(serving, timeout=5).model_status(model)
    except UserError:
        return set()
    return {s.version for s in statuses if s.state == "AVAILABLE"}


def closing_text(services: dict, model: str, served: int, request: Path, rollback_to: int | None, *,
                 warm: bool = True, mlops: str = "mlops", shell_env: dict[str, str] | None = None,
                 quick: bool = True) -> str:
    """Where to look and what to run next, each command as it can be pasted (pure). The rollback
    line only when there is a version to go back to (``--quick`` on a fresh state has served one
    version: a rollback would be refused). ``mlops``: how this shell reaches the command (``make
    demo`` runs it from the virtualenv, not from PATH); ``shell_env``: the variables the user's
    shell sets that would send those commands elsewhere (another MLflow, ledger, hosts file);
    ``warm``: the model server still has ``rollback_to`` loaded (else the rollback loads it);
    ``quick``: the run trained one version (without it, the later ones failed their gate or deploy,
    and "run without --quick" would be no help)."""
    import shlex

    how = ("kept warm on the host: about a second" if warm else
           "not loaded on the host any more: the rollback loads and smoke-tests it first")
    back = (f'{mlops} sync rollback --reason "why"   (to v{rollback_to}, {how})'
            if rollback_to is not None else
            (f"nothing to roll back to yet: v{served} is the first version to serve production "
             f"(run the demo without --quick for a second one)" if quick else
             f"nothing to roll back to yet: v{served} is the only version that has served production "
             f"(the later ones did not pass their gate or deploy)"))
    text = f"""
  MLflow UI (compare the runs, see the gate reports): {services['mlflow']}/#/models/{model}
  Model server (production uses real TensorFlow Serving):  {services['serving']}/v1/models/{model}
  Predict:   curl -s -X POST {services['serving']}/v1/models/{model}:predict -d @{shlex.quote(str(request))}
  Status:    {mlops} sync status        History: {mlops} registry history
  Roll back: {back}
  Stop:      {mlops} down"""
    if shell_env:
        text += ("\n  Note: your shell sets " + ", ".join(sorted(shell_env)) + ", which would send these "
                 "commands elsewhere; unset " + ("it" if len(shell_env) == 1 else "them") + " first")
    return text


def mlops_command() -> str:
    """``mlops`` when that is this program on PATH, else the path of this virtualenv's script."""
    import shutil

    here = Path(sys.executable).parent / "mlops"
    on_path = shutil.which("mlops")
    if on_path and Path(on_path).resolve() == here.resolve():
        return "mlops"
    if not here.exists():
        return "mlops"
    try:
        return str(here.relative_to(Path.cwd()))
    except ValueError:
        return str(here)


def foreign_settings(environ: dict[str, str], services: dict) -> dict[str, str]:
    """The variables of the user's shell that point the printed commands away from the demo (pure)."""
    out = {}
    if environ.get("MLFLOW_TRACKING_URI", "").rstrip("/") not in ("", services["mlflow"].rstrip("/")):
        out["MLFLOW_TRACKING_URI"] = environ["MLFLOW_TRACKING_URI"]
    if environ.get("MLOPS_LEDGER_URL"):
        out["MLOPS_LEDGER_URL"] = environ["MLOPS_LEDGER_URL"]
    if environ.get("MLOPS_HOSTS_FILE") and environ["MLOPS_HOSTS_FILE"] != str(services["hosts"]):
        out["MLOPS_HOSTS_FILE"] = environ["MLOPS_HOSTS_FILE"]
    if environ.get("MLOPS_SYNC_TARGET"):
        out["MLOPS_SYNC_TARGET"] = environ["MLOPS_SYNC_TARGET"]
    return out


SERVICES = ("model-server", "mlflow-server")
WAIT_POLL_SECONDS = 1.0


def _still_runs(rec) -> bool:
    """What a Ctrl-C at the end would stop: the recorded process, or what is left of its group (an
    MLflow worker whose first process died), zombies left out."""
    from mlops.detached_service import _group_lives
    from mlops_common.procs import group_members, pid_alive

    if rec.running:
        return True
    return _group_lives(rec) and any(pid_alive(int(p)) for p in group_members(rec.pid))


def _any_service_runs(state: Path) -> bool:
    """Whether a service of the demo still runs; True when its record cannot be read (the wait
    goes on, as it always did)."""
    from mlops.detached_service import read_record

    try:
        return any(rec is not None and _still_runs(rec) for rec in (read_record(state, n) for n in SERVICES))
    except UserError:
        return True


def wait_for_ctrl_c() -> None:
    """Until Ctrl-C, which stops the services; or until they are gone (`make down` from another
    terminal, as the README says: the demo waited on for a Ctrl-C with nothing left to stop)."""
    from mlops.detached_service import stop_service

    state = settings.state_dir()
    # as the closing text names it: `make demo` puts no `mlops` on PATH ("command not found")
    say(f"\nThe services keep running. Press Ctrl-C to stop them (or run `{mlops_command()} down` later).")
    try:
        while _any_service_runs(state):
            time.sleep(WAIT_POLL_SECONDS)
    except KeyboardInterrupt:
        try:    # a demo started since in another terminal runs on these services: not under it
            with one_demo_at_a_time(state):
                for name in SERVICES:
                    stop_service(state, name)
        except ConfigError:
            say(f"another `mlops demo` runs on {state} now: its services keep running (`{mlops_command()} "
                f"down` stops them)")
            return
        say("stopped.")
        return
    say(f"the services are no longer running (stopped by `{mlops_command()} down`, or they exited: their logs "
        f"are in {state}); nothing left to wait for.")


def check_options(opts: DemoOptions) -> None:
    """Every option the flow will use, checked before anything starts (one line each)."""
    from mlproject.train import TrainParams

    if not opts.yes and not sys.stdin.isatty():     # nobody could approve
        raise ConfigError("no terminal to ask for the approval on: run `mlops demo --yes` (or `make demo "
                          "DEMO_ARGS=--yes`) to approve each version as the CircleCI hold job's approver would")
    TrainParams(dataset=opts.dataset, epochs=opts.epochs).checked()     # --epochs 0: here, not after the servers
    # a name the serving host refuses (`my model`, `a/b`) was trained, registered, gated and promoted to
    # production, then refused at the deploy: here, as `mlops train` refuses it before training
    from serving_sync.names import check_model_name

    check_model_name(settings.model_name(), what="model name (MLOPS_MODEL_NAME)")
    # the settings the gate and the deploy read: a malformed one (MLOPS_LOCK_TTL=10m) was refused only
    # at the deploy, once v1 had been promoted: production on a version no host serves
    from registry.gate_rules import GateRules

    GateRules.from_env()
    settings.lock_ttl()
    rest, grpc = _ports()
    # one port for two servers: MLflow started, then the model server found "its" port taken (by that
    # MLflow) and the demo stopped with MLflow left running
    seen: dict[int, str] = {}
    for var, port in (("MLOPS_MLFLOW_PORT", settings.local_mlflow_port()), ("MLOPS_SERVING_REST_PORT", rest),
                      ("MLOPS_SERVING_GRPC_PORT", grpc)):
        if port in seen:
            raise ConfigError(f"{seen[port]} and {var} are both {port}: the demo's MLflow server and the model "
                              f"server's REST and gRPC ports must be three different ports")
        seen[port] = var


def _say_what_keeps_running() -> None:
    """After a demo stopped by an error: the local services that run on, and how to stop them (the
    hint was printed only after an interrupt, and an error mid-flow left them running unsaid)."""
    from mlops.detached_service import read_record

    state = settings.state_dir()
    with contextlib.suppress(UserError, OSError):
        running = [p.stem for p in sorted(state.glob("*.json"))
                   if (rec := read_record(state, p.stem)) is not None and rec.running]
        if running:
            print(f"the local services keep running ({', '.join(running)}; state in {state}); "
                  f"`{mlops_command()} down` stops them", file=sys.stderr)


def main(opts: DemoOptions, *, detach: bool) -> int:
    from mlops.local_services import check_state_path
    from serving_sync.cancel import DeployInterrupted

    check_options(opts)
    check_state_path(settings.state_dir())      # before its lock is made in it
    # nothing the demo makes (state folder, hosts file, databases, served versions) writable by any
    # user: under umask 000 (WSL, some containers) its deploy refused the hosts file the demo had just
    # written ("may be written by any user"), once v1 had been promoted
    os.umask(os.umask(0) | 0o002)
    try:
        with one_demo_at_a_time(settings.state_dir()):
            run(opts)
    # Ctrl-C or SIGTERM mid-flow: its MLflow run is closed FAILED by now, a deploy's hosts put back
    except (KeyboardInterrupt, DeployInterrupted):
        print(f"the local services keep running (state in {settings.state_dir()}); `{mlops_command()} down` "
              f"stops them", file=sys.stderr)
        raise
    except GateFailed as exc:  # only for a first version: nothing to serve
        _say_what_keeps_running()
        raise UserError(f"the first version failed the gate: {exc.message}") from None
    except UserError:          # a refusal mid-flow (a full disk): the services it started run on
        _say_what_keeps_running()
        raise
    if not detach and sys.stdin.isatty():
        wait_for_ctrl_c()
    return 0
