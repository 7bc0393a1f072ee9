"""The smoke test of one served version: signature, golden outputs, latency.

A version is trusted on a host only when TF Serving's own ``/metadata`` shows the signature the
version was registered with (``golden/signature.json``), its golden request returns the outputs
the exported SavedModel produced at training time (within ``atol``), and the p95 latency over a
bounded number of requests stays under a budget. The verdicts are pure functions on JSON and
numbers; ``run_smoke`` is the I/O edge that asks TF Serving through a route (a version of an
entry, a label, or the unversioned route).
"""
from __future__ import annotations

import functools
import json
import math
import struct
import time
from dataclasses import dataclass, field

from mlops_common.errors import UserError

DEFAULT_ATOL = 1e-4
DEFAULT_REQUESTS = 20
DEFAULT_BUDGET_MS = 500.0
MAX_REQUESTS = 1000
# the p95 (nearest rank) of fewer requests is their slowest one: a single slow answer (a pause of the
# host, of this machine) would fail a version whose other answers are all within budget; of 20 it
# is the 19th smallest, one slow answer allowed
MIN_REQUESTS = 20


@dataclass(frozen=True)
class Golden:
    """What a version must answer: the golden request, its recorded response, its signature."""

    request: dict
    response: dict
    signature: dict

    @functools.cached_property
    def request_body(self) -> bytes:
        """The golden request as sent, encoded once (a smoke test sends it twenty-odd times)."""
        return json.dumps(self.request).encode()


@dataclass(frozen=True)
class SmokeOptions:
    atol: float = DEFAULT_ATOL
    requests: int = DEFAULT_REQUESTS          # latency sample size (bounded)
    budget_ms: float = DEFAULT_BUDGET_MS      # p95 latency budget
    request_timeout: float = 10.0

    def __post_init__(self):
        if not (self.atol >= 0 and math.isfinite(self.atol)):
            raise UserError(f"--atol must be a non-negative number, got {self.atol}")
        if not MIN_REQUESTS <= self.requests <= MAX_REQUESTS:
            raise UserError(f"--latency-requests must be between {MIN_REQUESTS} and {MAX_REQUESTS}, got "
                            f"{self.requests}" + (f" (the p95 of fewer than {MIN_REQUESTS} requests is the slowest "
                                                  f"one: a single slow answer would fail the version)"
                                                  if self.requests < MIN_REQUESTS else ""))
        if not self.budget_ms > 0:
            raise UserError(f"--latency-budget-ms must be positive, got {self.budget_ms}")


@dataclass
class Check:
    name: str
    passed: bool
    message: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"name": self.name, "passed": self.passed, "message": self.message, "seconds": self.seconds}


@dataclass
class SmokeReport:
    """The checks made against one route of one host."""

    host: str
    model: str
    route: str                 # e.g. "digits__validate/versions/3", "digits/labels/stable"
    version: int
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def summary(self) -> str:
        bad = self.failures()
        if not bad:
            return f"smoke test of v{self.version} via {self.route} passed"
        return "; ".join(f"{c.name}: {c.message}" for c in bad)

    def to_dict(self) -> dict:
        return {"host": self.host, "model": self.model, "route": self.route, "version": self.version,
                "passed": self.passed, "checks": [c.to_dict() for c in self.checks]}


# --- verdicts (pure) -----------------------------------------------------------------------
def compare_signature(expected: dict, served: dict) -> list[str]:
    """Differences between the registered signature and the one TF Serving serves. A registered
    document the gate would refuse (``registry.signature.format_problems``: e.g. ``{}``) is a
    problem: it compares nothing, and an empty one passed ("matches golden/signature.json")."""
    from registry.signature import format_problems

    problems = [f"golden/signature.json: {p}" for p in format_problems(expected)]
    if problems:
        return problems
    for key, exp in sorted(expected.items()):
        got = served.get(key)
        if got is None:
            problems.append(f"signature {key!r} is not served (served: {sorted(served) or 'none'})")
            continue
        if got.get("method_name") != exp.get("method_name"):
            problems.append(f"{key}: method {got.get('method_name')!r} != {exp.get('method_name')!r}")
        for side in ("inputs", "outputs"):
            e, g = exp.get(side) or {}, got.get(side) or {}
            if set(e) != set(g):
                problems.append(f"{key}: {side} {sorted(g)} != registered {sorted(e)}")
                continue
            for name in sorted(e):
                if e[name] != g[name]:
                    problems.append(f"{key}: {side[:-1]} {name!r} is {g[name]} but registered as {e[name]}")
    return problems


def _payload(doc: dict):
    """The prediction payload of a REST predict response (row or columnar format)."""
    if "predictions" in doc:
        return doc["predictions"]
    if "outputs" in doc:
        return doc["outputs"]
    raise KeyError("neither 'predictions' nor 'outputs'")


def _float32(x) -> float | None:
    """``x`` rounded to float32 (None past float32's range)."""
    try:
        return struct.unpack("<f", struct.pack("<f", x))[0]
    except OverflowError:
        return None


def _walk(exp, got, path: str, atol: float, out: dict, f32: bool = False) -> None:
    """``f32``: ``exp`` is (part of) a float32 output; below an output's name (row format with
    several outputs, ``[i].name``, or columnar, ``name``) that output's own dtype decides."""
    if isinstance(exp, dict):
        if not isinstance(got, dict) or set(exp) != set(got):
            seen = sorted(got) if isinstance(got, dict) else type(got).__name__
            out["structure"].append(f"{path or 'outputs'}: keys {seen} != {sorted(exp)}")
            return
        for k in sorted(exp):
            named = out["float32"]
            _walk(exp[k], got[k], f"{path}.{k}" if path else k, atol, out,
                  k in named if isinstance(named, frozenset) else f32)
    elif isinstance(exp, list):
        if not isinstance(got, list) or len(exp) != len(got):
            seen = len(got) if isinstance(got, list) else type(got).__name__
            out["structure"].append(f"{path or 'outputs'}: length {seen} != {len(exp)}")
            return
        for i, (e, g) in enumerate(zip(exp, got)):
            _walk(e, g, f"{path}[{i}]", atol, out, f32)
    elif isinstance(exp, bool) or not isinstance(exp, (int, float)):
        if exp != got:
            out["values"].append((math.inf, path))
    else:
        if isinstance(got, bool) or not isinstance(got, (int, float)):
            out["structure"].append(f"{path}: {got!r} is not a number")
            return
        try:
            # the same infinity is no difference (TF Serving writes it "-Infinity", as the golden
            # set does; inf - inf is NaN, which failed a version answering exactly its outputs)
            diff = 0.0 if exp == got else abs(float(exp) - float(got))
        except OverflowError:  # a JSON integer past a double's range: no answer of a model
            out["structure"].append(f"{path}: {str(got)[:20]}... is not a finite number")
            return
        if diff > atol and f32 and math.isfinite(diff) and _float32(exp) == _float32(got) is not None:
            # one float32 written two ways: the golden set's shortest text, TF Serving's %.9g
            diff = 0.0
        if not diff <= atol:   # also catches NaN
            out["values"].append((diff, path))
        out["max"] = max(out["max"], diff) if math.isfinite(diff) else math.inf


def float32_outputs(signature: dict) -> bool | frozenset[str]:
    """Are all outputs of the registered ``serving_default`` float32 (``DT_FLOAT``)? If not all,
    the names of those that are (float32 scores beside an int64 class id: the scores' values
    compare as float32 all the same, and ``--atol 0`` failed them)."""
    sig = signature.get("serving_default") if isinstance(signature, dict) else None
    outputs = sig.get("outputs") if isinstance(sig, dict) else None
    if not isinstance(outputs, dict) or not outputs:
        return False
    names = frozenset(k for k, o in outputs.items() if isinstance(o, dict) and o.get("dtype") == "DT_FLOAT")
    return True if len(names) == len(outputs) else names


def compare_outputs(expected: dict, served: dict, atol: float, *,
                    float32: bool | frozenset[str] = False) -> tuple[list[str], float]:
    """Problems between the golden response and the served one, and the largest |difference|.
    ``float32``: the outputs are float32 (True), or the names of those that are
    (``float32_outputs``), so two texts of the same float32 value are equal (the golden set
    writes the shortest text, TF Serving ``%.9g``: as doubles they differ by ~1e-9, and
    ``--atol 0`` failed a version answering exactly its golden outputs)."""
    try:
        exp, got = _payload(expected), _payload(served)
    except KeyError as exc:
        return [f"response has {exc.args[0]}"], math.inf
    out = {"structure": [], "values": [], "max": 0.0, "float32": float32}
    _walk(exp, got, "", atol, out, float32 is True)
    problems = list(out["structure"][:3])
    if out["values"]:
        worst = max(out["values"], key=lambda x: math.inf if math.isnan(x[0]) else x[0])
        problems.append(f"{len(out['values'])} value(s) differ by more than atol {atol:g} "
                        f"(max |diff| {worst[0]:.3g} at {worst[1] or 'the output'})")
    return problems, (math.inf if out["structure"] else out["max"])


def p95(values: list[float]) -> float:
    """95th percentile, nearest-rank (of 20 samples: the 19th smallest)."""
    if not values:
        raise ValueError("no samples")
    ordered = sorted(values)
    return ordered[_p95_rank(len(ordered)) - 1]


def _p95_rank(n: int) -> int:
    """The nearest rank of the 95th percentile among ``n`` samples (1-based)."""
    return max(1, math.ceil(0.95 * n))


def label_message(label: str, version: int, got: int | None, served: list[int] | None, model: str, *,
                  commands: bool = False) -> str:
    """What a label check found: ``got`` the version ``label`` points at, ``served`` the versions
    the host serves when it points at none (None: not asked). ``commands``: say which command
    fixes it (``mlops sync smoke``, run by a person or a CI job after a deploy, not by one)."""
    if got == version:
        return f"{label} -> {got}"
    if got is not None:
        return (f"{label} -> {got}, expected v{version}"
                + (f": the host serves another version; deploy v{version} with `mlops sync deploy`, or "
                   f"smoke-test v{got} with --version {got}" if commands else ""))
    if served:
        found = (f"no version holds the label '{label}' on this host (TF Serving serves "
                 f"{', '.join(f'v{v}' for v in served)} without it)")
        fix = f"`mlops sync deploy` assigns it, or --via version tests v{version}'s own route"
    else:
        found = f"TF Serving on this host serves no version of '{model}'"
        fix = f"deploy v{version} with `mlops sync deploy`"
    return f"{label} -> nothing, expected v{version}: {found}" + (f"; {fix}" if commands else "")


def version_message(model: str, version: int, status, served: list[int]) -> str:
    """What a version route's check found (``mlops sync smoke --via version``): ``status`` the
    version's (a ``VersionStatus``, None when TF Serving does not know it), ``served`` the versions
    AVAILABLE; when it is not, which command puts it there."""
    if status is not None and status.state == "AVAILABLE":
        return f"v{version} AVAILABLE"
    state = ("unknown to TF Serving" if status is None else f"{status.state}"
             + (f": {status.error_message}" if status.error_message else ""))
    serves = (f"it serves {', '.join(f'v{v}' for v in served)}" if served
              else f"it serves no version of '{model}'")
    return (f"v{version} is not loaded on this host ({state}; {serves}); `mlops sync deploy` puts production "
            f"there, `--version {version}` this one")


def latency_verdict(latencies_ms: list[float], budget_ms: float) -> Check:
    value = p95(latencies_ms)
    msg = (f"p95 {value:.1f} ms over {len(latencies_ms)} requests (budget {budget_ms:g} ms; "
           f"max {max(latencies_ms):.1f} ms)")
    return Check("latency", value <= budget_ms, msg)


# --- the I/O edge --------------------------------------------------------------------------
def route_name(model: str, *, version: int | None = None, label: str | None = None) -> str:
    if version is not None:
        return f"{model}/versions/{version}"
    if label is not None:
        return f"{model}/labels/{label}"
    return model


def run_smoke(client, host: str, model: str, golden: Golden, version: int, *, route_version: int | None = None,
              label: str | None = None, opts: SmokeOptions = SmokeOptions(),
              latency: bool = True, commands: bool = False) -> SmokeReport:
    """Ask TF Serving through one route and judge the answers (never raises for a failed check).

    ``model`` is the entry name (e.g. ``digits__validate``), ``version`` the registry version the
    answers must belong to, ``route_version`` / ``label`` select the route (neither: unversioned).
    ``commands``: a failed label check names the command that fixes it (``label_message``), and a
    version route is checked to be AVAILABLE first (``version_message``).
    """
    from .errors import HostUnreachable, NotTFServing, ServingError

    report = SmokeReport(host, model, route_name(model, version=route_version, label=label), version)
    kw = {"version": route_version, "label": label}

    def timed(name: str, fn) -> Check:
        start = time.monotonic()
        try:
            check = fn()
        except (ServingError, HostUnreachable) as exc:
            check = Check(name, False, str(exc))
        except (TypeError, ValueError, AttributeError) as exc:
            # JSON that is not TF Serving's where its fields should be (a "version" that is no
            # number, an object that is a string): the host's, not the version's, and no traceback
            raise NotTFServing(f"{host} answered the {name} check via {report.route} with JSON that is not "
                               f"TF Serving's ({type(exc).__name__}: {str(exc)[:120]}); check the host's "
                               f"rest_url") from None
        check.seconds = time.monotonic() - start
        report.checks.append(check)
        return check

    if label is not None:
        def label_check() -> Check:
            got = client.label_version(model, label)
            served = None
            if got is None:     # no label yet (never deployed here), or no model at all: not the same fix
                served = sorted(s.version for s in client.model_status(model) if s.state == "AVAILABLE")
            return Check("label", got == version, label_message(label, version, got, served, model,
                                                                commands=commands))
        if not timed("label", label_check).passed:
            return report
    if route_version is not None and commands:
        def version_check() -> Check:
            statuses = client.model_status(model)
            st = next((s for s in statuses if s.version == route_version), None)
            served = sorted(s.version for s in statuses if s.state == "AVAILABLE")
            return Check("version", st is not None and st.state == "AVAILABLE",
                         version_message(model, route_version, st, served))
        if not timed("version", version_check).passed:     # each check would fail with TF Serving's 404
            return report

    def signature_check() -> Check:
        from .tfs_client import normalize_signature

        meta = client.metadata(model, **kw)
        problems = compare_signature(golden.signature, normalize_signature(meta, ("serving_default",)))
        answered = (meta.get("model_spec") or {}).get("version")
        if route_version is None and label is None and answered not in (None, "") and int(answered) != version:
            # the unversioned route answers with the highest loaded version: outputs alone cannot
            # tell two versions apart when they agree within atol (a deterministic retrain)
            problems.insert(0, f"the unversioned route answers v{answered}, not v{version}")
        return Check("signature", not problems, "; ".join(problems) or "matches golden/signature.json")

    def outputs_check() -> Check:
        served = client.predict(model, golden.request_body, timeout=opts.request_timeout, **kw)
        problems, worst = compare_outputs(golden.response, served, opts.atol,
                                          float32=float32_outputs(golden.signature))
        return Check("golden_outputs", not problems,
                     "; ".join(problems) or f"match within atol {opts.atol:g} (max |diff| {worst:.2g})")

    timed("signature", signature_check)
    if not timed("golden_outputs", outputs_check).passed or not latency:
        return report

    def latency_check() -> Check:
        from . import cancel

        # more samples over budget than rank above the p95 one: the p95 of all of them is over
        # budget whatever the rest answer (a slow host held the deploy requests x timeout)
        over_allowed = opts.requests - _p95_rank(opts.requests)
        samples, over = [], 0
        for _ in range(opts.requests):
            cancel.check()
            start = time.perf_counter()
            client.predict(model, golden.request_body, timeout=opts.request_timeout, **kw)
            samples.append((time.perf_counter() - start) * 1000.0)
            over += samples[-1] > opts.budget_ms
            if over > over_allowed:
                break
        check = latency_verdict(samples, opts.budget_ms)
        if len(samples) < opts.requests:
            check.message += (f"; stopped after {len(samples)} of {opts.requests} requests: {over} over budget "
                              f"already put the p95 of {opts.requests} over it")
        return check

    timed("latency", latency_check)
    return report
