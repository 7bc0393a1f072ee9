"""The version's Markdown description: the story the narrow tag column cannot hold.

``refresh(model, version)`` rebuilds it from the ledger and the version's tags and writes it
(MLflow's ``model-versions/update``); it is called after each gate, promotion, rollback, deploy
and reconcile, so it always says the same as the ledger. ``render`` is pure. The registered
model gets a fixed description too (``ensure_model_description``).

Only the block between ``<!-- mlops:begin -->`` and ``<!-- mlops:end -->`` (HTML comments: the
page does not show them) is ours; whatever a person writes above or below it stays
(``compose``). The block stays under ``BLOCK_LIMIT`` characters: MLflow keeps a description in a
5,000-character column on SQL stores and refuses a longer one, which would leave the old text.

The wording is stable (the browser test reads it): the block's first line is
``**v<N>** · <aliases> · validation <status> · deploy <status>`` (aliases as ``\\@production``:
a bare ``@name`` is a GitHub link on MLflow's page), then lines starting ``**Approved by:**``,
``**Validation:**``, ``**Deploy status:**``, ``**Data set:**``, ``**Commit:**``, ``**Links:**``,
and the sections ``#### Production history`` and ``#### Deploys per host``. ``block(text)``
gives the block of a written description.
"""
from __future__ import annotations

import re
from datetime import datetime
from urllib.parse import quote

from mlops_common import log, settings
from mlops_common.errors import RefusedError, UserError
from mlops_common.text import markdown_text, printable

from . import tags as T
from . import versions
from .gate_rules import GateRules, decimals_apart, limit_text
from .history import class_figures
from .ledger import CREATED_MS, Entry, Ledger
from .promotion_rules import version_label
from .rest import rest

_log = log.get("registry.description")
_HISTORY_ROWS = 10
_CELL_CHARS = 160                     # of a cell's Markdown, escapes included
_URL_CHARS = 400
DESCRIPTION_LIMIT = 5000              # MLflow's model_versions.description on SQL stores: String(5000)
BLOCK_LIMIT = 4900                    # our block, markers included; the rest is room for a person's note
BEGIN, END = "<!-- mlops:begin -->", "<!-- mlops:end -->"
_MARKERS = len(BEGIN) + len(END) + 2      # what ``compose`` adds around the rendered block
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


def _v(version) -> str:
    return version_label(version, "none")


def _cell(text) -> str:
    """Free text (a reason, an actor, a host, a tag) as literal Markdown text: never markup, never
    more than one line or one table cell; at most 160 characters of Markdown (cut after escaping,
    so an escape is never cut in two and the cap holds whatever the text)."""
    return markdown_text(text or "", limit=_CELL_CHARS)


def _some(cells: list[str], budget: int) -> str:
    """``cells`` joined with ", ", as many as fit in ``budget`` characters, then how many more."""
    out, used = [], 0
    for i, c in enumerate(cells):
        if out and used + len(c) + 2 > budget:
            return ", ".join(out) + f" and {len(cells) - i} more"
        out.append(c)
        used += len(c) + 2
    return ", ".join(out)


def _code(text) -> str:
    """A short identifier (a commit, a fingerprint: hex) as a code span; any other character as ``?``."""
    return "`" + re.sub(r"[^0-9A-Za-z._-]", "?", str(text)) + "`"


def _link(label: str, url: str | None) -> str | None:
    """``[label](url)`` for an http(s) URL, with every character that could end the link or start
    markup percent-encoded; None for anything else (javascript:, data:, ...) and for a URL too
    long to keep the description under MLflow's limit."""
    url = printable(url or "", "").strip()
    if not url.lower().startswith(("http://", "https://")):
        return None
    url = quote(url, safe=_URL_SAFE)
    return f"[{label}]({url})" if len(url) <= _URL_CHARS else None


def _when(e: Entry) -> str:
    return e.at.strftime("%Y-%m-%d %H:%M") if e.at else ""


def _ci_of_register(entries: list[Entry], version: int) -> dict:
    """The CircleCI ids the version's ``register`` row kept (they are not version tags)."""
    for e in entries:
        if e.action == "register" and e.to_version == version and isinstance(e.details, dict):
            return e.details.get("ci") or {}
    return {}


def current(entries: list[Entry], created_at: datetime | None, version: int | None = None) -> list[Entry]:
    """The rows that can be about ``version`` as MLflow created it at ``created_at``, of the rows of
    the model MLflow holds now (``Ledger.entries(current=True)``: a model deleted and created again
    numbers its versions from 1, and the deleted one's rows are about other versions of the same
    numbers; that cut is the ledger's, made once for every reader). Ordered by the data, one clock
    each: the version's own ``register`` row (its ``created_ms`` is ``created_at``, both the MLflow
    server's clock) and every row appended after it (the ledger's ids); a ``register`` row of the
    same number created at another time, and every row before it, is an earlier version's. No
    writer's clock is compared with the server's (found by review, twentieth stop: a CI runner
    whose clock was behind the server's hid the version's own promotion and gate from its page;
    twenty-first stop: a version registered outside mlops still did, and `registry status` and
    `registry reconcile` did for every version)."""
    if created_at is None or version is None:
        return list(entries)
    ms = round(created_at.timestamp() * 1000)
    registered = [(i, e.details.get(CREATED_MS)) for i, e in enumerate(entries)
                  if e.action == "register" and e.outcome == "ok" and isinstance(e.details, dict)
                  and e.to_version == version and isinstance(e.details.get(CREATED_MS), int)]
    own = [i for i, created in registered if created == ms]
    if own:
        return list(entries[own[-1]:])
    earlier = [i for i, created in registered if created < ms]
    return list(entries[earlier[-1] + 1:] if earlier else entries)


def _host(e: Entry) -> str:
    """The row's host, and the fleet it is in when that is another than the configured one (a
    deploy with ``--hosts`` naming another file: ``details.fleet``, the file's name shown)."""
    fleet = e.details.get("fleet") if isinstance(e.details, dict) else None
    host = e.host or "-"
    return f"{host} (fleet {str(fleet).rsplit('/', 1)[-1]})" if isinstance(fleet, str) and fleet else host


def _host_state(e: Entry, version: int) -> str:
    if e.action == "host_rollback" and e.from_version == version:
        return "put back" if e.outcome == "ok" else f"put back {e.outcome}"
    return e.outcome


def _replaced(e: Entry, version: int) -> bool:
    """A host's deploy of another version over ``version`` (the host served it until then)."""
    return (e.action == "deploy" and e.outcome == "ok" and e.from_version == version
            and e.to_version not in (None, version))


def _step(e: Entry, version: int | None = None) -> str:
    if e.action == "host_rollback" or (version is not None and _replaced(e, version)):
        return f"{_cell(e.action)} {_v(e.from_version)} → {_v(e.to_version)}"
    when = e.details.get("when") if isinstance(e.details, dict) else None
    if e.action == "smoke_test" and isinstance(when, str):     # a host's two: before and after its switch
        return f"{_cell(e.action)} {_cell(when)}"
    return _cell(e.action)


def _forced(e: Entry) -> bool:
    return isinstance(e.details, dict) and bool(e.details.get("forced"))


def _automatic(e: Entry) -> bool:
    """A failed deploy's revert of production (``deploy_revert``), not a person's rollback."""
    return isinstance(e.details, dict) and bool(e.details.get("automatic"))


def ledger_approver(entries: list[Entry], version: int) -> str | None:
    """Who let ``version`` into production, as the ledger records it: what the moves write into
    its ``approved_by`` tag (``promotion_view.promotion_tags``), replayed from the rows. The approver
    (else the actor) of the newest ``ok`` move that put it there; a failed deploy's automatic
    revert leaves it as it was (the revert keeps its target's approver); a move recorded where it
    already held production counts only while there is none (it then wrote its own). None when no
    such row is in ``entries``."""
    found = None
    for e in entries:
        if e.action not in ("promote", "rollback") or e.outcome != "ok" or e.to_version != version:
            continue
        details = e.details if isinstance(e.details, dict) else {}
        if details.get("automatic"):
            continue
        if e.from_version != e.to_version or found is None:
            found = details.get("approved_by") or e.actor
    return found


def approval(tags: dict[str, str], entries: list[Entry], version: int) -> tuple[str | None, str | None]:
    """(who let ``version`` in, the ``approved_by`` tag when it says someone else). The ledger
    wins: it is append-only, while anyone with write access to the registry can edit a tag
    (MLflow UI or API); a tag that disagrees is shown as changed outside mlops. With no ledger
    row to say (an older ledger, a version re-created), the tag is what there is. A tag that
    is missing is not a disagreement (a move whose tag writes failed, a deferred view)."""
    tag = T.read(tags, T.APPROVED_BY)
    recorded = ledger_approver(entries, version)
    if recorded is None:
        return tag, None
    return recorded, tag if tag and tag != recorded else None


def approver_to_restore(tags: dict[str, str], entries: list[Entry], version: int) -> str | None:
    """The ledger's approver of ``version`` when its ``approved_by`` tag does not say it (edited,
    or removed, outside mlops; or a move's tag write failed): what ``registry reconcile`` writes
    back and ``registry status`` flags. None when the tag says it, or the ledger names nobody
    (no move row to the version: the tag, if any, is all there is and stays)."""
    recorded = ledger_approver(entries, version)
    return recorded if recorded is not None and T.read(tags, T.APPROVED_BY) != recorded else None


def moved_in_again(deploy_status: str | None, entries: list[Entry], version: int) -> Entry | None:
    """The move that put ``version`` back into production after the rollback its ``rolled_back``
    deploy status records (that status is then an earlier term's: nothing deployed it since);
    None otherwise. Found by review (2026-12-06): the page and `registry status` of a version
    promoted again said "production, deploy rolled_back", with the old rollback's reason."""
    if deploy_status != "rolled_back":
        return None
    touching = [e for e in entries if e.action in ("promote", "rollback") and e.outcome == "ok"
                and version in (e.to_version, e.from_version) and e.from_version != e.to_version]
    if touching and touching[-1].to_version == version \
            and any(e.action == "rollback" and e.from_version == version for e in touching):
        return touching[-1]
    return None


def _rules_changed(changed) -> str:
    """A gate row's rules set away from the defaults (``details.rules_changed``), for its
    Validation line: a pass under a lower bar is marked, as a signature change allowed is."""
    if not isinstance(changed, dict) or not changed:
        return ""
    defaults = {"min_accuracy": f"{GateRules().min_accuracy:g}"}

    def value_text(x) -> str:
        return f"{x:g}" if isinstance(x, (int, float)) and not isinstance(x, bool) else _cell(str(x))

    return "; gate rules set away from the defaults: " + ", ".join(
        f"{name if name in GateRules.__dataclass_fields__ else _cell(str(name))} {value_text(value)} "
        f"(default {defaults.get(name, 'derived')})" for name, value in sorted(changed.items()))


def _failed_figures(details: dict) -> str:
    """The figures behind a failed gate's rules, from its row's details: the minimum accuracy,
    the allowed overall drop, the classes over their allowed drop. The rule names alone hid why
    (found by review, nineteenth stop: "failed — held-out accuracy 0.9222 vs 0.8867 for production
    v1; failed rules: class_accuracy_vs_production" read as better, and named no class)."""
    failed = details.get("failed_rules") or []
    out = []
    changed = details.get("rules_changed") if isinstance(details.get("rules_changed"), dict) else {}
    minimum = changed.get("min_accuracy", GateRules().min_accuracy)
    if "min_accuracy" in failed and isinstance(minimum, (int, float)):
        out.append(f"minimum accuracy {limit_text(minimum)}")
    acc, prod, tolerance = details.get("accuracy"), details.get("production_accuracy"), details.get("tolerance")
    if "accuracy_vs_production" in failed and all(isinstance(x, (int, float)) for x in (acc, prod, tolerance)):
        places = decimals_apart(prod - acc, tolerance)
        out.append(f"accuracy drop {prod - acc:.{places}f}, allowed {tolerance:.{places}f}")
    figures = details.get("per_class")
    if "class_accuracy_vs_production" in failed and isinstance(figures, dict) \
            and isinstance(figures.get("classes"), list):
        bad = [c for c in figures["classes"] if isinstance(c, dict) and c.get("breached")]
        cells = [_cell(class_figures(c)) for c in bad]
        more = figures.get("breached") - len(bad) if isinstance(figures.get("breached"), int) else 0
        if cells:
            out.append("classes over their allowed drop: " + _some(cells + ([f"{more} more"] if more > 0 else []), 400))
    return "; ".join(out)


def _table(header: list[str], rows: list[str], left_out: int) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |", *rows]
    if left_out:
        lines += ["", f"{left_out} older {'row' if left_out == 1 else 'rows'} left out here; "
                      f"`mlops registry history` lists every row."]
    return lines


def render(*, version: int, tags: dict[str, str], aliases: tuple[str, ...],
           entries: list[Entry], run_url: str | None = None, report_url: str | None = None,
           created_at: datetime | None = None, max_chars: int = BLOCK_LIMIT - _MARKERS) -> str:
    """The description block of v``version`` (pure: tags, aliases, the model's ledger rows, the
    version's creation time; the block never names the model, whose page it is on). At most
    ``max_chars`` characters when the table rows can make it so: the oldest rows go first, and the
    table says how many it left out."""
    entries = current(entries, created_at, version)
    mine = [e for e in entries if version in (e.to_version, e.from_version)]
    gates = [e for e in entries if e.action == "gate" and e.to_version == version]
    moves = [e for e in entries if e.action in ("promote", "rollback") and e.outcome == "ok"]
    to_me = [e for e in moves if e.to_version == version]
    # a promotion of the version already in production is recorded but moves nothing: the line
    # names the move that put it there (found by a sweep: a no-op hid the rollback that did)
    to_me = [e for e in to_me if e.from_version != e.to_version] or to_me
    validation = T.read(tags, T.VALIDATION_STATUS) or "pending"
    # the first line says the last gate's verdict, as the Validation line does: the tag (which anyone
    # with write access can set) said "validation passed" above a failed gate (found by review,
    # twentieth stop); the Validation line names a tag that disagrees
    verdict = gates[-1].outcome if gates else validation
    deploy = T.read(tags, T.DEPLOY_STATUS) or "not deployed"
    again = moved_in_again(deploy, entries, version)
    shown = f"not deployed since its {again.action} #{again.id}" if again else deploy
    head = " · ".join([f"**v{version}**", _some([_cell(f"@{a}") for a in aliases], 300) or "no alias",
                       f"validation {_cell(verdict)}", f"deploy {_cell(shown)}"])
    lines = [head, ""]
    if to_me:
        last = to_me[-1]
        approver, edited = approval(tags, entries, version)
        approver = approver or (last.details or {}).get("approved_by") or last.actor
        outside = isinstance(last.details, dict) and bool(last.details.get("moved_outside"))
        mark = ("**forced**: " if _forced(last) else "**outside mlops**: " if outside else
                "**automatic**, after a failed deploy: " if _automatic(last) else "")
        lines.append(f"**Approved by:** {_cell(approver)} ({mark}"
                     f"{_cell(last.action)} {_v(last.from_version)} → "
                     f"v{version} {'recorded by' if outside else 'by'} {_cell(last.actor)}, {_when(last)} UTC, "
                     f"ledger #{last.id}"
                     + (f"; reason: {_cell(last.reason)}" if last.reason else "") + ")"
                     + (f" — the `approved_by` tag says {_cell(edited)}: changed outside mlops" if edited else ""))
    else:
        lines.append("**Approved by:** nobody yet (never promoted)")
    if gates:
        g = gates[-1]
        acc, prod = g.details.get("accuracy"), g.details.get("production_accuracy")
        nums = f"held-out accuracy {acc:.4f}" if isinstance(acc, (int, float)) else "held-out accuracy ?"
        if g.from_version is not None and isinstance(prod, (int, float)):
            nums += f" vs {prod:.4f} for production {_v(g.from_version)}"
        if g.from_version is None and g.details.get("gated_production"):
            # a re-run while it held production compares with nothing: "passed" alone hid that, and
            # that its last gate against production failed (found by review, nineteenth stop)
            compared = [e for e in gates[:-1] if e.from_version is not None]
            nums += (", gated while it held production (no baseline: only the absolute rules applied"
                     + (f"; its last gate against production: {_cell(compared[-1].outcome)} against "
                        f"{_v(compared[-1].from_version)}, ledger #{compared[-1].id}" if compared else "") + ")")
        failed = [_cell(f) for f in g.details.get("failed_rules") or []]
        lines.append(f"**Validation:** {_cell(g.outcome)} — {nums}"
                     + (f"; failed rules: {_some(failed, 400)}" if failed else "")
                     + (f" — {why}" if failed and (why := _failed_figures(g.details)) else "")
                     + ("; serving signature change allowed" if g.details.get("signature_change_allowed") else "")
                     + _rules_changed(g.details.get("rules_changed"))
                     + f" (gate {_when(g)} UTC, ledger #{g.id})"
                     + (f" — the `validation_status` tag says {_cell(validation)}: changed outside mlops, or "
                        f"its write failed; `mlops registry gate --version {version}` makes them agree"
                        if T.read(tags, T.VALIDATION_STATUS) not in (None, g.outcome) else ""))
    else:
        lines.append(f"**Validation:** {_cell(validation)} (not gated yet)")
    # this version's steps on each host, a host put back from it after a failure in a later wave,
    # and a later deploy that switched a host from it to another version
    deploys = [e for e in mine if (e.action in ("deploy", "smoke_test", "host_rollback", "canary")
                                   and e.to_version == version)
               or (e.action == "host_rollback" and e.from_version == version) or _replaced(e, version)]
    latest: dict[str, Entry] = {}
    # a host a later deploy switched to another version: "web-1 ok" read as serving it still (found
    # by review, nineteenth stop: v2 rolled back, its page said "rolled_back — web-1 ok")
    replaced: dict[str, Entry] = {}
    for e in deploys:
        host = _host(e)
        if (e.action == "deploy" and e.to_version == version) \
                or (e.action == "host_rollback" and e.from_version == version):
            latest[host] = e
            replaced.pop(host, None)
        elif _replaced(e, version) and host in latest:
            replaced[host] = e
        elif e.action == "host_rollback" and e.to_version == version and e.outcome == "ok":
            replaced.pop(host, None)          # that deploy failed elsewhere: the host serves it again
    per_host = _some([f"{_cell(h)} " + (f"replaced by {_v(replaced[h].to_version)}" if h in replaced
                                        else _cell(_host_state(e, version)))
                      for h, e in sorted(latest.items())], 600)
    reason = T.read(tags, T.DEPLOY_REASON)
    if again:
        lines.append(f"**Deploy status:** {_cell(shown)} ({_when(again)} UTC); before it: rolled back"
                     + (f" ({_cell(reason)})" if reason and reason != "none" else ""))
    else:
        lines.append(f"**Deploy status:** {_cell(deploy)}" + (f" — {per_host}" if per_host else "")
                     + (f"; reason: {_cell(reason)}" if reason and reason != "none" and deploy != "deployed" else ""))
    ds = T.read(tags, T.DATASET)
    fp = T.read(tags, T.DATASET_FINGERPRINT)
    retrained = T.read(tags, T.RETRAINED_FROM)
    lines.append(f"**Data set:** {_cell(ds) if ds else 'unknown'}" + (f" (fingerprint {_code(fp[:12])})" if fp else "")
                 + (f"; retrained from {_v(int(retrained)) if retrained.isdigit() else _cell(retrained)}"
                    if retrained else ""))
    commit = T.read(tags, T.GIT_COMMIT)
    pipeline = T.read(tags, T.PIPELINE_ID)
    lines.append(f"**Commit:** {_code(commit[:12]) if commit else 'unknown'}"
                 + (f" · pipeline {_cell(pipeline)}" if pipeline else ""))
    links = [_link("run", run_url), _link("gate report", report_url) if gates else None,
             _link("CircleCI job", _ci_of_register(entries, version).get("ci.build_url"))]
    links = [link for link in links if link]
    lines.append("**Links:** " + (" · ".join(links) if links else "none"))

    order = {id(e): i for i, e in enumerate(entries)}      # which row is older, across both tables
    history = [e for e in moves if version in (e.to_version, e.from_version)]
    history_rows = [(order[id(e)], f"| #{e.id} | {_when(e)} | {_cell(e.action)}"
                     f"{' (**forced**)' if _forced(e) else ' (**automatic**)' if _automatic(e) else ''} | "
                     f"{_v(e.from_version)} → {_v(e.to_version)} | "
                     f"{_cell(e.actor)} | {_cell(e.reason)} |") for e in history]
    deploy_rows = [(order[id(e)], f"| #{e.id} | {_when(e)} | {_cell(_host(e))} | {_step(e, version)} | "
                    f"{_cell(e.outcome)} | {_cell(e.reason)} |") for e in deploys]

    def text(h: int, d: int) -> str:
        """The block with the newest ``h`` history rows and ``d`` deploy rows."""
        out = lines + ["", "#### Production history", ""]
        out += (_table(["ledger", "when (UTC)", "move", "from → to", "by", "reason"],
                       [r for _, r in history_rows[len(history_rows) - h:]], len(history_rows) - h)
                if history_rows else ["never held production"])
        out += ["", "#### Deploys per host", ""]
        out += (_table(["ledger", "when (UTC)", "host", "step", "outcome", "reason"],
                       [r for _, r in deploy_rows[len(deploy_rows) - d:]], len(deploy_rows) - d)
                if deploy_rows else ["no deploy yet"])
        return "\n".join(out) + "\n"

    h, d = min(len(history_rows), _HISTORY_ROWS), min(len(deploy_rows), _HISTORY_ROWS)
    out = text(h, d)
    while len(out) > max_chars and (h or d):
        # drop the oldest row shown, whichever table it is in
        oldest_h = history_rows[len(history_rows) - h][0] if h else None
        oldest_d = deploy_rows[len(deploy_rows) - d][0] if d else None
        if oldest_d is None or (oldest_h is not None and oldest_h < oldest_d):
            h -= 1
        else:
            d -= 1
        out = text(h, d)
    return out


def block(description: str | None) -> str:
    """Our block of a written description (between the markers; all of it when it has none)."""
    text = description or ""
    start = text.find(BEGIN)
    start = 0 if start < 0 else start + len(BEGIN)
    end = text.find(END, start)
    return text[start:end if end >= 0 else len(text)].strip("\n") + "\n"


def _looks_like_ours(text: str) -> bool:
    """A description this code wrote before it marked its block: it rewrote the whole text each
    time, so no person's words can be in it."""
    return bool(re.match(r"\*\*v\d+\*\* · ", text)) and "#### Deploys per host" in text


def others(description: str | None) -> tuple[str, str]:
    """What is not ours in a written description: (the text above our block, the text below it),
    kept as they are. A begin marker without an end marker: ours runs to the end (the end marker
    was deleted); an end marker alone: ours starts at the top. No marker at all: a description an
    older version of this code wrote (``_looks_like_ours``) is replaced whole; any other text is a
    person's and stays below our block."""
    text = description or ""
    start, end = text.find(BEGIN), text.find(END)
    if start >= 0:
        end = text.find(END, start)
        return text[:start], (text[end + len(END):] if end >= 0 else "")
    if end >= 0:
        return "", text[end + len(END):]
    if not text.strip() or _looks_like_ours(text):
        return "", ""
    return "", "\n\n" + text.strip("\n")


def compose(above: str, rendered: str, below: str) -> str:
    """The whole description: a person's text above, our block between its markers, theirs below."""
    return f"{above}{BEGIN}\n{rendered}\n{END}{below}"


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
    """Rebuild our block of the description of ``model`` v``version`` and write it, keeping a
    person's text around it; returns the whole description."""
    info = versions.get_version(model, version)
    entries = (ledger or Ledger()).entries(model, version=info.version, current=True)     # all ``render`` reads
    run_url, report_url = _urls(info.run_id)
    above, below = others(info.description)
    room = DESCRIPTION_LIMIT - len(above) - len(below) - _MARKERS
    rendered = render(version=info.version, tags=info.tags, aliases=info.aliases,
                      entries=entries, run_url=run_url, report_url=report_url, created_at=info.created_at,
                      max_chars=min(BLOCK_LIMIT - _MARKERS, room))
    text = compose(above, rendered, below)
    # what we write, escaped or not (a person's own text is theirs)
    plain = re.sub(r"\\(.)", r"\1", rendered)
    if any(secret in plain or markdown_text(secret) in rendered for secret in settings.secret_values()):
        raise RefusedError(f"refusing to write the description of version {info.version} of '{model}': "
                           f"it contains the value of a secret environment variable")
    if len(text) > DESCRIPTION_LIMIT:
        raise UserError(f"not writing the description of version {info.version} of '{model}': with the "
                        f"{len(above) + len(below)} characters written outside the mlops block it would be "
                        f"{len(text)} characters, and MLflow keeps at most {DESCRIPTION_LIMIT}; shorten that text")
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


def _model_others(description: str | None) -> tuple[str, str]:
    """What is not ours in the registered model's description (``others``); without markers, a
    text an older mlops wrote whole (it starts as ours) is replaced, any other is a person's."""
    text = description or ""
    if BEGIN not in text and END not in text and text.startswith(MODEL_DESCRIPTION.split("\n", 1)[0][:40]):
        return "", ""
    return others(text)


def ensure_model_description(model: str) -> None:
    """Give the registered model its description (what it predicts, input contract, how
    versions reach production, where the ledger is) when it has none or an older one: our
    block between the markers, a person's text around it kept (it was written over at every
    registration)."""
    doc = rest().get("registered-models/get", {"name": model}, what=f"reading registered model '{model}'")
    current = (doc.get("registered_model") or {}).get("description") or ""
    above, below = _model_others(current)
    text = compose(above, MODEL_DESCRIPTION + "\n", below)
    if text == current:
        return
    if len(text) > DESCRIPTION_LIMIT:
        raise UserError(f"not writing the description of registered model '{model}': with the "
                        f"{len(above) + len(below)} characters written outside the mlops block it would be "
                        f"{len(text)} characters, and MLflow keeps at most {DESCRIPTION_LIMIT}; shorten that text")
    rest().call("PATCH", "registered-models/update", body={"name": model, "description": text},
                what=f"writing the description of registered model '{model}'")
