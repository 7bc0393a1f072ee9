"""``mlops registry history`` and ``status``: the ledger and the versions as tables or JSON.

Formatting is pure (plain rows in, text out); ``status_rows`` is the only part that reads MLflow.
"""
from __future__ import annotations

import unicodedata
from datetime import datetime, timezone

from mlops_common.text import printable

from . import tags as T
from .ledger import Entry
from .promotion_rules import fleet_of, version_label


def age(then: datetime, now: datetime | None = None) -> str:
    """A short human age such as ``45s``, ``12m``, ``3h``, ``2d``; ``now``: on the clock ``then`` was
    read from (this machine's when not given); a ``then`` after it is ``0s``."""
    now = now or datetime.now(timezone.utc)
    s = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def table(headers: list[str], rows: list[list]) -> str:
    """A plain aligned text table; control characters in a cell (ESC, CR, OSC... of a reason or
    an actor read back from the ledger) are shown as ``?``, never sent to the terminal."""
    cells = [[printable(c) for c in r] for r in rows]
    widths = [max([display_width(h)] + [display_width(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = lambda r: "  ".join(c + " " * (w - display_width(c)) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


def display_width(text: str) -> int:
    """Terminal cells ``text`` takes: wide and full-width characters (CJK, most emoji) two,
    combining marks none. Padding by ``len`` shifted every later column of a row with an actor
    or reason in Chinese."""
    return sum(_cells(ch) for ch in text)


def _cells(ch: str) -> int:
    if unicodedata.category(ch) in ("Mn", "Me", "Cf") or "\u1160" <= ch <= "\u11ff":
        return 0            # marks drawn on the character before (Thai, Devanagari), ZWJ, jamo
    return 2 if unicodedata.east_asian_width(ch) in "WF" else 1


def _v(version) -> str:
    return version_label(version, "none")


def history_table(entries: list[Entry], *, reason_width: int = 60, model: str | None = None,
                  actions: tuple[str, ...] | None = None) -> str:
    """The rows as a table; none: says which filter found nothing (the ledger may hold other rows)."""
    if not entries:
        if not (model or actions):
            return "(the ledger is empty)"
        what = " and ".join(x for x in (f"model '{model}'" if model else "",
                                         f"action {', '.join(actions)}" if actions else "") if x)
        return f"(no ledger rows for {what})"
    rows = []
    for e in entries:
        reason = printable(e.reason)
        if len(reason) > reason_width:
            reason = reason[:reason_width - 1] + "…"
        rows.append([e.id, e.at.strftime("%Y-%m-%d %H:%M:%S") if e.at else "", e.action, e.model,
                     f"{_v(e.from_version)}->{_v(e.to_version)}", _by(e), e.pipeline_id or "",
                     _host(e), e.outcome, reason])
    return table(["id", "at (UTC)", "action", "model", "from->to", "actor", "pipeline", "host",
                  "outcome", "reason"], rows)


def _host(e: Entry) -> str:
    """The row's host, and the other fleet's hosts file it was deployed with (``details.fleet``), as
    the version's page says it: a staging host's rows read as the configured fleet's (found by
    review, twenty-second stop)."""
    fleet = fleet_of(e)
    return f"{e.host or '-'} (fleet {fleet.rsplit('/', 1)[-1]})" if fleet else e.host or ""


def _by(e: Entry) -> str:
    """The row's actor, and its CircleCI approver when that is someone else: a promotion's actor is
    the CI job's user, and the person who let the version in was only in ``--json``."""
    approver = e.details.get("approved_by") if isinstance(e.details, dict) else None
    actor = e.actor or ""
    if isinstance(approver, str) and approver and approver != actor:
        return printable(f"{actor} (approved by {approver})" if actor else f"approved by {approver}")
    return actor


def class_breach_lines(entries: list[Entry]) -> list[str]:
    """A line under the history table for each gate row whose per-class rule found classes over
    their allowed drop (``details.per_class``, ``gate_report.ledger_classes``): which classes, each
    with the candidate's and production's accuracy and the allowed drop, in the gate's own words
    (the table's reason column is cut at 60 characters, before the classes)."""
    lines = []
    for e in entries:
        figures = e.details.get("per_class") if e.action == "gate" and isinstance(e.details, dict) else None
        if not isinstance(figures, dict) or not isinstance(figures.get("classes"), list):
            continue
        bad = [c for c in figures["classes"] if isinstance(c, dict) and c.get("breached")]
        if not bad:
            continue
        parts = [class_figures(c) for c in bad]
        more = figures.get("breached") - len(bad) if isinstance(figures.get("breached"), int) else 0
        if more > 0:
            parts.append(f"and {more} more")
        lines.append(printable(f"#{e.id} gate {_v(e.to_version)} vs production {_v(e.from_version)}: "
                               f"{len(bad) + max(more, 0)} of {figures.get('compared')} classes over their "
                               f"allowed drop: " + "; ".join(parts)))
    return lines


def class_figures(c: dict) -> str:
    def f(x) -> str:
        return f"{x:.3f}" if isinstance(x, (int, float)) else "?"
    if c.get("candidate") is None:
        return f"class {c.get('class')} missing from the candidate's evaluation"
    drop = (c["production"] - c["candidate"] if isinstance(c.get("production"), (int, float))
            and isinstance(c["candidate"], (int, float)) else None)
    return (f"class {c.get('class')} {f(c['candidate'])} vs {f(c.get('production'))} "
            f"(-{f(drop)}; allowed {f(c.get('allowed_drop'))})")


def status_rows(model: str, entries: list[Entry] | None = None) -> list[dict]:
    """Every version of ``model`` with aliases, validation and deploy status, accuracy, age and
    who let it into production: the ledger's, as the description says (``description.approval``;
    ``approved_by_tag``: the tag as it is, set when it says someone else; ``approved_by_tag_missing``:
    the ledger names an approver and the version has no tag).
    ``validation_status``: the verdict of the version's last ``gate`` row, as its description's first
    line says (the tag only without one); ``validation_status_tag``: the tag, set when it says
    otherwise (a tag set to ``passed`` over a failed gate read "passed" in the table; found by
    review, twentieth stop). ``entries``: the model's ``promote`` / ``rollback`` / ``gate`` rows,
    other actions ignored, of the model as MLflow holds it now (``registry status`` passes
    ``reconciliation.ledger_view``'s, read once for this and its agreement line; read from the
    ledger when not given). MLflow never numbers two versions of one registered model alike, so
    every row of that model about v<N> is this v<N>'s: no row's time (its writer's clock) is
    compared with the version's creation (the server's; found by review, twenty-first stop: a CI
    runner ten minutes behind hid a version's promotion and gate)."""
    from . import description, move_checks, versions
    from .ledger import Ledger

    found = versions.list_versions(model)
    if entries is None:
        entries = Ledger().entries(model, actions=("promote", "rollback", "gate"), current=True)
    by_run = versions.runs_metrics(info.run_id for info in found)   # a deleted run: no metrics, still listed
    # a version's age on the clock that dated it, the MLflow server's (its answers' Date): this
    # machine's may be minutes apart, and a laptop behind the server showed new versions as "0s"
    # for minutes, one ahead made them older (found by review, twenty-first stop)
    from .rest import rest

    now = rest().server_now()
    rows = []
    for info in found:
        metrics = by_run.get(info.run_id or "", {})
        mine = entries      # the model's rows as MLflow holds it now: never the writers' clocks per version
        approver, edited = description.approval(info.tags, mine, info.version)
        # no tag, yet someone let it in: with the tag missing, ``approval`` can only have the ledger's
        missing = approver is not None and not T.read(info.tags, T.APPROVED_BY)
        again = description.moved_in_again(info.deploy_status, mine, info.version)
        gate = move_checks.latest_gate(mine, info.version)
        tag = T.read(info.tags, T.VALIDATION_STATUS)
        rows.append({"version": info.version, "aliases": list(info.aliases),
                     "validation_status": gate.outcome if gate else info.validation_status,
                     "validation_status_tag": tag if gate and tag not in (None, gate.outcome) else None,
                     "gate_ledger_id": gate.id if gate else None,
                     "deploy_status": info.deploy_status,
                     "heldout_accuracy": metrics.get("heldout_accuracy"),
                     "created_at": info.created_at.isoformat(timespec="seconds"),
                     "age": age(info.created_at, now),
                     "dataset": T.read(info.tags, T.DATASET),
                     "pipeline_id": T.read(info.tags, T.PIPELINE_ID),
                     "approved_by": approver, "approved_by_tag": edited, "approved_by_tag_missing": missing,
                     "not_deployed_since": again.id if again else None})
    return rows


def approval_lines(rows: list[dict]) -> list[str]:
    """A line under the status table for each version whose ``approved_by`` tag says someone
    else than the ledger, or is missing where the ledger names an approver, and for each whose
    ``validation_status`` tag says otherwise than its last gate (``status_rows``)."""
    lines = []
    for r in rows:
        if r.get("validation_status_tag"):
            lines.append(f"warning: v{r['version']}'s validation_status tag says "
                         f"{printable(r['validation_status_tag'])} but its last gate (ledger "
                         f"#{r['gate_ledger_id']}) {printable(r['validation_status'])}: the tag was changed "
                         f"outside mlops, or its write failed; `mlops registry gate --version {r['version']}` "
                         f"makes them agree")
        if r.get("approved_by_tag"):
            lines.append(f"warning: v{r['version']}'s approved_by tag says {printable(r['approved_by_tag'])} but "
                         f"the ledger records {printable(r['approved_by'])}: the tag was changed outside mlops "
                         f"(its description shows the ledger's)")
        elif r.get("approved_by_tag_missing"):
            lines.append(f"warning: v{r['version']}'s approved_by tag is missing but the ledger records "
                         f"{printable(r['approved_by'])}: the tag was removed outside mlops, or a move's tag "
                         f"write failed; `mlops registry reconcile` writes it back")
    return lines


def agreement_line(a) -> str:
    """The line under the status table: does ``production`` sit where the ledger says
    (``reconciliation_rules.Agreement``)."""
    where = "(none)" if a.alias is None else f"v{a.alias}"
    problem = a.problem()
    if problem is None:
        return f"production: {where}, as the ledger says"
    return f"{'warning' if a.agrees else 'MISMATCH'}: {problem}"


def status_table(model: str, rows: list[dict]) -> str:
    if not rows:
        return f"registered model '{model}' has no versions (none registered yet, or all deleted)"
    return table(["version", "aliases", "validation", "deploy", "heldout_acc", "age", "dataset",
                  "pipeline"],
                 [[r["version"], ",".join(r["aliases"]) or "-", r["validation_status"],
                   f"not deployed since #{r['not_deployed_since']}" if r.get("not_deployed_since")
                   else r["deploy_status"] or "-",
                   "-" if r["heldout_accuracy"] is None else f"{r['heldout_accuracy']:.4f}",
                   r["age"], r["dataset"] or "-", r["pipeline_id"] or "-"] for r in rows])
