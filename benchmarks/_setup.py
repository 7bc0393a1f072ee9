"""What every benchmark shares: the machine it ran on, a quiet machine, results, tables, a lab.

- ``machine()``: CPU model, cores, memory, kernel, Python, load average (written into every result).
- ``wait_for_quiet()``: before measured runs, wait (bounded) until the 1-minute load average is
  below a threshold, because other work on a 2-core machine changes every figure.
- ``save(name, doc)``: ``benchmarks/results/<name>.json`` (temp file + rename), with the machine.
- ``table(headers, rows)``: a plain fixed-width text table.
- ``Lab``: the real services a deploy benchmark needs, started here and stopped at the end — a
  real ``mlflow server`` (SQLite, local artifacts), local TF-Serving-compatible servers, the tiny
  SavedModels of the deploy tests (``tests/lab/bundles.py``: versions told apart by their
  outputs) and the lab's ``DeployEnv`` (``tests/lab/deploy_env.py``) to register, promote and add
  hosts. The benchmarks reuse the tests' lab through its public names; the tests never import the
  benchmarks.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


# --- the machine -------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError):
        pass
    return None


def process_cpu_s(pids, *, reaped_children: bool = False) -> float:
    """User + system CPU seconds of these processes: their own, plus, with ``reaped_children``,
    that of their children that exited and were waited for (sshd: its sessions and the shells,
    tar and hashing they ran)."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        fields = parts[11:15] if reaped_children else parts[11:13]
        total += sum(int(x) for x in fields) / os.sysconf("SC_CLK_TCK")
    return total


def machine() -> dict:
    """Where a figure was measured (CPU, cores, memory, kernel, Python, load average now)."""
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "memory_gib": _mem_gib(),
            "kernel": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def machine_line(m: dict | None = None) -> str:
    m = m or machine()
    la = ", ".join(f"{x:.2f}" for x in m["load_average"])
    return (f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['kernel']}, Python {m['python']}, "
            f"load average {la}")


def wait_for_quiet(threshold: float = 1.5, max_wait: float = 600.0, poll: float = 10.0,
                   *, log=None) -> dict:
    """Wait (bounded by ``max_wait`` seconds) until the 1-minute load average is below ``threshold``.

    Returns what happened (waited seconds, load before/after, whether it got quiet), to be
    written into the results: a figure measured on a busy machine says so.
    """
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    before = os.getloadavg()[0]
    start = time.monotonic()
    polls = int(max_wait / poll) + 1 if poll > 0 else 1
    announced = False
    for _ in range(polls):
        now = os.getloadavg()[0]
        if now < threshold:
            break
        if time.monotonic() - start >= max_wait:
            break
        if not announced:
            log(f"waiting up to {max_wait:.0f}s for the 1-minute load average ({now:.2f}) to drop below "
                f"{threshold}")
            announced = True
        time.sleep(min(poll, max(0.0, max_wait - (time.monotonic() - start))))
    after = os.getloadavg()[0]
    quiet = after < threshold
    if not quiet:
        log(f"WARNING: load average still {after:.2f} after {time.monotonic() - start:.0f}s; measuring anyway "
            f"(the results record it)")
    return {"threshold": threshold, "waited_seconds": round(time.monotonic() - start, 1),
            "load_1min_before": round(before, 2), "load_1min_at_start": round(after, 2), "quiet": quiet}


# --- results -----------------------------------------------------------------------------------
def save(name: str, doc: dict, results_dir: Path | None = None) -> Path:
    """Write ``doc`` (plus the machine, if absent) as ``<results>/<name>.json`` atomically. A
    ``--quick`` run (its command says so) goes to ``results/quick/`` (not kept in git): it
    overwrote the recorded figures with one short round."""
    quick = "--quick" in str(doc.get("command") or "")
    folder = Path(results_dir) if results_dir is not None else (RESULTS / "quick" if quick else RESULTS)
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": name, **doc}
    doc.setdefault("machine", machine())
    doc.setdefault("commit", git_commit())
    doc.setdefault("finished_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    path = folder / f"{name}.json"
    tmp = folder / f".{name}.json.{uuid.uuid4().hex[:6]}.tmp"
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)
    return path


def report(name: str, doc: dict, table: str, results_dir: Path | None = None) -> dict:
    """Save ``doc`` (see :func:`save`), print the benchmark's table, the machine it started on
    and where the results went; every benchmark ends with this."""
    doc.setdefault("machine", machine())
    doc.setdefault("commit", git_commit())
    path = save(name, doc, results_dir)
    print(table)
    print(f"\nmachine: {machine_line(doc.get('machine_at_start'))}\nresults: {path}")
    return doc


def table(headers: list[str], rows: list[list]) -> str:
    """A fixed-width text table (numbers right-aligned)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def fmt(row, raw):
        out = []
        for i, c in enumerate(row):
            numeric = isinstance(raw[i], (int, float)) and not isinstance(raw[i], bool) if raw else False
            out.append(c.rjust(widths[i]) if numeric else c.ljust(widths[i]))
        return "  ".join(out).rstrip()

    lines = [fmt(cells[0], None), "  ".join("-" * w for w in widths)]
    lines += [fmt(c, r) for c, r in zip(cells[1:], rows)]
    return "\n".join(lines)


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 4) if values else None


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    k = max(1, -(-len(ordered) * q // 100))
    return ordered[int(min(k, len(ordered))) - 1]


# --- the lab: real services for the deploy benchmarks -------------------------------------------
class Lab:
    """MLflow + local TF-Serving-compatible servers + the deploy tests' tiny versions.

    ``with Lab() as lab: env = lab.deploy_env()`` gives a ``tests.lab.deploy_env.DeployEnv``
    for a fresh model name and MLOPS_HOME (``add_host``, ``register``, ``promote``, ``deploy``,
    ``which``...). The environment is applied to ``os.environ`` of this process (the benchmark
    process is the only user of it) and passed to ``mlops`` subprocesses.
    """

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="mlops-bench-"))
        self._stack = contextlib.ExitStack()
        self._saved_env: dict[str, str | None] = {}
        self.mlflow_url: str | None = None
        self.bundles = None
        self.pool = None
        self._factory = None
        self._envs: list = []

    def __enter__(self) -> "Lab":
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        from mlops.detached_service import stop_service
        from mlops.local_services import start_mlflow
        from mlops.ports import free_port
        from tests.lab.bundles import build_bundles
        from tests.lab.servers import ServerPool
        from tests.lab.tfserving import make_factory

        state = self.root / "mlflow-state"
        svc = start_mlflow(state, port=free_port())
        self._stack.callback(stop_service, state, "mlflow-server")
        self.mlflow_url = svc.url
        self.bundles = build_bundles(self.root / "bundles")
        factory, handles = make_factory(self.root / "servers")
        (self.root / "servers").mkdir(parents=True, exist_ok=True)
        self._factory = factory
        self._stack.callback(lambda: [h.stop() for h in handles])
        self.pool = ServerPool(factory, self.root / "pool")

    def set_env(self, env: dict[str, str]) -> None:
        for k, v in env.items():
            self._saved_env.setdefault(k, os.environ.get(k))
            os.environ[k] = v

    def deploy_env(self, name: str | None = None):
        """A fresh model name and MLOPS_HOME on this lab's MLflow server (a ``DeployEnv``)."""
        from tests.lab.deploy_env import DeployEnv

        name = name or f"bench-{uuid.uuid4().hex[:8]}"
        home = self.root / f"home-{name}"
        home.mkdir(parents=True, exist_ok=True)
        env = {"MLFLOW_TRACKING_URI": self.mlflow_url, "MLOPS_HOME": str(home), "MLOPS_MODEL_NAME": name}
        self.set_env(env)
        for var in ("MLOPS_LEDGER_URL", "MLOPS_HOSTS_FILE", "MLOPS_SYNC_TARGET", "MLOPS_SYNC_REST_URL"):
            self._saved_env.setdefault(var, os.environ.get(var))
            os.environ.pop(var, None)
        tmp = self.root / f"tmp-{name}"
        tmp.mkdir(parents=True, exist_ok=True)
        de = DeployEnv(env, self.bundles, tmp, self._factory, pool=self.pool)
        self._envs.append(de)
        return de

    def server(self, base: Path, **kw):
        """Another local TF-Serving-compatible server (stopped with the lab)."""
        return self._factory(base, **kw)

    def close(self) -> None:
        for de in self._envs:
            with contextlib.suppress(Exception):
                de.close()
        self._stack.close()
        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(self.root, ignore_errors=True)


def mlops_env(extra: dict | None = None, repo: Path | None = None) -> dict:
    """Environment for an ``mlops`` subprocess: this process's, plus ``extra``; ``repo`` (default
    this checkout) first on PYTHONPATH, so another checkout's ``mlops`` can be measured."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(repo or REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


def git_commit(repo: Path | None = None) -> str | None:
    """The commit checked out in ``repo`` (default this checkout), for the results; ``+dirty``
    when code outside ``benchmarks/results`` differs from it (the figures are then of code no
    commit holds: a result said 5640685 for a benchmark that commit did not have)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo or REPO, capture_output=True, text=True,
                             timeout=10)
        changed = subprocess.run(["git", "status", "--porcelain", "--", ".", ":(exclude)benchmarks/results"],
                                 cwd=repo or REPO, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = out.stdout.strip()
    return (commit + ("+dirty" if changed.stdout.strip() else "")) or None
