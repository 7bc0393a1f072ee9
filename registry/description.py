"""The version's Markdown description: the story the narrow tag column cannot hold.

``refresh(model, version)`` rebuilds it from the ledger and the version's tags and writes it
(MLflow's ``model-versions/update``); it is called after each gate, promotion, rollback, deploy
and reconcile, so it always says the same as the ledger. ``render`` is pure. The registered
model gets a fixed description too (``ensure_model_description``).

The wording is stable (the browser test reads it): the first line is
``**v<N>** · <aliases> · validation <status> · deploy <status>``, then lines starting
``**Approved by:**``, ``**Validation:**``, ``**Deploy status:**``, ``**Data set:**``,
``**Commit:**``, ``**Links:**``, and the sections ``#### Production history`` and
``#### Deploys per host``.
"""
from __future__ import annotations

import re
from urllib.parse import quote

from mlops_common import log, settings
from mlops_common.errors import RefusedError
from mlops_common.text import markdown_text, printable

from . import tags as T
from . import versions
from .ledger import Entry, Ledger
from .rest import rest

_log = log.get("registry.description")
_HISTORY_ROWS = 10
_URL_SAFE = "/:?#=&%@+,;~-._!$"      # kept as they are in a link's URL; the rest is percent-encoded

MODEL_DESCRIPTION = """\
Classifies small grayscale images (8x8 digits or 28x28 Fashion-MNIST) into 10 classes.

**Input contract:** TF Serving `serving_default`, one float32 input of shape `[-1, H, W, 1]`
with values in [0, 1]; output: class probabilities `[-1, 10]` (see `golden/signature.json` of
each version's run).

**How a version reaches production:** `mlops train` / `retrain` registers it
(`validation_status=pending`) → `mlops registry gate` compares it with production on the frozen
held-out set (`passed` → alias `candidate`; report in the run's `gate/report.html`) → a person
approves in CircleCI (`hold`) → `mlops registry promote` moves alias `production` →
`mlops sync deploy` serves it (`deploy_status`). Rollback moves `production` back.

**Record:** every register, gate, promotion, deploy and rollback is a row in the append-only
ledger (`MLOPS_LEDGER_URL`; `mlops registry history`). Each version's description is rebuilt
from it at every step."""


def _v(x) -> str:
    return "none" if x is None else f"v{x}"


def _cell(text) -> str:
    """Free text (a reason, an actor, a host, a tag) as literal Markdown text: never markup, never
    more than one line or one table cell; at most 160 characters of it."""
    return markdown_text(printable(text or "", " ")[:160])


def _code(text) -> str:
    """A short identifier (a commit, a fingerprint: hex) as a code span; any other character as ``?``."""
    return "`" + re.sub(r"[^0-9A-Za-z._-]", "?", str(text)) + "`"


def _link(label: str, url: str | None) -> str | None:
    """``[label](url)`` for an http(s) URL, with every character that could end the link or start
    markup percent-encoded; None for anything else (javascript:, data:, ...)."""
    url = printable(url or "", "").strip()
    if not url.lower().startswith(("http://", "https://")):
        return None
    return f"[{label}]({quote(url, safe=_URL_SAFE)})"


def _when(e: Entry) -> str:
    return e.at.strftime("%Y-%m-%d %H:%M") if e.at else ""


def _ci_of_register(entries: list[Entry], version: int) -> dict:
    """The CircleCI ids the version's ``register`` row kept (they are not version tags)."""
    for e in entries:
        if e.action == "register" and e.to_version == version and isinstance(e.details, dict):
            return e.details.get("ci") or {}
    return {}


def render(*, model: str, version: int, tags: dict[str, str], aliases: tuple[str, ...],
           entries: list[Entry], run_url: str | None = None, report_url: str | None = None) -> str:
    """The description of ``model`` v``version`` (pure: tags, aliases, the model's ledger rows)."""
    mine = [e for e in entries if version in (e.to_version, e.from_version)]
    gates = [e for e in entries if e.action == "gate" and e.to_version == version]
    moves = [e for e in entries if e.action in ("promote", "rollback") and e.outcome == "ok"]
    to_me = [e for e in moves if e.to_version == version]
    validation = tags.get(T.VALIDATION_STATUS, "pending")
    deploy = tags.get(T.DEPLOY_STATUS) or "not deployed"
    head = " · ".join([f"**v{version}**", ", ".join(f"@{_cell(a)}" for a in aliases) or "no alias",
                       f"validation {_cell(validation)}", f"deploy {_cell(deploy)}"])
    lines = [head, ""]
    if to_me:
        last = to_me[-1]
        approver = tags.get(T.APPROVED_BY) or last.details.get("approved_by") or last.actor
        lines.append(f"**Approved by:** {_cell(approver)} ({_cell(last.action)} {_v(last.from_version)} → "
                     f"v{version} by {_cell(last.actor)}, {_when(last)} UTC, ledger #{last.id}"
                     + (f"; reason: {_cell(last.reason)}" if last.reason else "") + ")")
    else:
        lines.append("**Approved by:** nobody yet (never promoted)")
    if gates:
        g = gates[-1]
        acc, prod = g.details.get("accuracy"), g.details.get("production_accuracy")
        nums = f"held-out accuracy {acc:.4f}" if isinstance(acc, (int, float)) else "held-out accuracy ?"
        if g.from_version is not None and isinstance(prod, (int, float)):
            nums += f" vs {prod:.4f} for production {_v(g.from_version)}"
        failed = g.details.get("failed_rules") or []
        lines.append(f"**Validation:** {_cell(g.outcome)} — {nums}"
                     + (f"; failed rules: {', '.join(_cell(f) for f in failed)}" if failed else "")
                     + ("; serving signature change allowed" if g.details.get("signature_change_allowed") else "")
                     + f" (gate {_when(g)} UTC, ledger #{g.id})")
    else:
        lines.append(f"**Validation:** {_cell(validation)} (not gated yet)")
    deploys = [e for e in mine if e.action in ("deploy", "smoke_test", "host_rollback", "canary")
               and e.to_version == version]
    latest: dict[str, Entry] = {}
    for e in deploys:
        if e.action == "deploy":
            latest[e.host or "-"] = e
    per_host = ", ".join(f"{_cell(h)} {_cell(e.outcome)}" for h, e in sorted(latest.items()))
    reason = tags.get(T.DEPLOY_REASON)
    lines.append(f"**Deploy status:** {_cell(deploy)}" + (f" — {per_host}" if per_host else "")
                 + (f"; reason: {_cell(reason)}" if reason and reason != "none" and deploy != "deployed" else ""))
    ds = tags.get(T.DATASET)
    fp = tags.get(T.DATASET_FINGERPRINT)
    retrained = tags.get(T.RETRAINED_FROM)
    lines.append(f"**Data set:** {_cell(ds) if ds else 'unknown'}" + (f" (fingerprint {_code(fp[:12])})" if fp else "")
                 + (f"; retrained from {_cell(retrained)}" if retrained else ""))
    commit = tags.get(T.GIT_COMMIT)
    pipeline = tags.get(T.PIPELINE_ID)
    lines.append(f"**Commit:** {_code(commit[:12]) if commit else 'unknown'}"
                 + (f" · pipeline {_cell(pipeline)}" if pipeline else ""))
    links = [_link("run", run_url), _link("gate report", report_url) if gates else None,
             _link("CircleCI job", _ci_of_register(entries, version).get("ci.build_url"))]
    links = [link for link in links if link]
    lines.append("**Links:** " + (" · ".join(links) if links else "none"))
    history = [e for e in moves if version in (e.to_version, e.from_version)][-_HISTORY_ROWS:]
    lines += ["", "#### Production history", ""]
    if history:
        lines += ["| ledger | when (UTC) | move | from → to | by | reason |", "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| #{e.id} | {_when(e)} | {_cell(e.action)} | {_v(e.from_version)} → {_v(e.to_version)} | "
                  f"{_cell(e.actor)} | {_cell(e.reason)} |" for e in history]
    else:
        lines.append("never held production")
    lines += ["", "#### Deploys per host", ""]
    if deploys:
        lines += ["| ledger | when (UTC) | host | step | outcome | reason |", "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| #{e.id} | {_when(e)} | {_cell(e.host)} | {_cell(e.action)} | {_cell(e.outcome)} | "
                  f"{_cell(e.reason)} |"
                  for e in deploys[-_HISTORY_ROWS:]]
    else:
        lines.append("no deploy yet")
    return "\n".join(lines) + "\n"


def _urls(run_id: str | None) -> tuple[str | None, str | None]:
    if not run_id:
        return None, None
    try:
        doc = rest().get("runs/get", {"run_id": run_id}, what=f"reading run {run_id}")
        exp = doc["run"]["info"]["experiment_id"]
    except Exception:  # noqa: BLE001 - a link is a nicety; the description is written anyway
        return None, None
    base = settings.tracking_uri().rstrip("/")
    run = f"{base}/#/experiments/{quote(str(exp))}/runs/{quote(run_id)}"
    return run, f"{run}/artifacts/gate/report.html"


def refresh(model: str, version, *, ledger: Ledger | None = None) -> str:
    """Rebuild and write the description of ``model`` v``version``; returns it."""
    info = versions.get_version(model, version)
    entries = (ledger or Ledger()).entries(model)
    run_url, report_url = _urls(info.run_id)
    text = render(model=model, version=info.version, tags=info.tags, aliases=info.aliases,
                  entries=entries, run_url=run_url, report_url=report_url)
    if any(secret in text or markdown_text(secret) in text for secret in settings.secret_values()):
        raise RefusedError(f"refusing to write the description of version {info.version} of '{model}': "
                           f"it contains the value of a secret environment variable")
    rest().call("PATCH", "model-versions/update",
                body={"name": model, "version": str(info.version), "description": text},
                what=f"writing the description of version {info.version} of '{model}'")
    return text


def refresh_quietly(model: str, *version_numbers) -> None:
    """``refresh`` each version (skipping None); a failure is a warning, never the caller's error
    (the description is a view of the ledger, rebuilt at the next step)."""
    for v in version_numbers:
        if v is None:
            continue
        try:
            refresh(model, v)
        except Exception as exc:  # noqa: BLE001 - see docstring
            _log.warning("could not write the description of version %s of '%s': %s", v, model, exc)


def ensure_model_description(model: str) -> None:
    """Give the registered model its description (what it predicts, input contract, how
    versions reach production, where the ledger is) when it has none or an older one."""
    doc = rest().get("registered-models/get", {"name": model}, what=f"reading registered model '{model}'")
    if (doc.get("registered_model") or {}).get("description") == MODEL_DESCRIPTION:
        return
    rest().call("PATCH", "registered-models/update", body={"name": model, "description": MODEL_DESCRIPTION},
                what=f"writing the description of registered model '{model}'")
