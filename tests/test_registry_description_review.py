"""What people read in the MLflow UI — a version's description and its tags — after the review of
the version page: mentions and emphasis, MLflow's 5,000-character limit, a person's own text, a
stale ``@candidate``, hosts put back after a later wave failed, leftover ``deploy_canary``, forced
promotions, older tag names, a re-created model's v1, and a server without webhooks.

Most checks are on ``render`` and the other pure functions; the ones about what MLflow stores or
answers run on the session's real MLflow server (and one file-store server for webhooks).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from mlops_common.text import markdown_text
from registry import deploys, description, promotion, versions
from registry.ledger import Entry, Ledger
from registry.rest import rest
from tests.helpers import run_mlops

AT = datetime(2026, 12, 1, 15, 0, tzinfo=timezone.utc)
RUN_URL = "http://mlflow.example.internal:5000/#/experiments/1/runs/" + "a" * 32
LONG_REASON = ("web-%d.prod.example.internal: smoke_validation: golden outputs differ by 0.031 (atol 1e-05) "
               "at instance 3 class 7; p95 latency 412 ms > budget 250 ms; see ledger")


def rows(*entries: Entry) -> list[Entry]:
    """``entries`` with ids and times as the ledger gives them (in order)."""
    return [Entry(e.action, e.model, e.outcome, host=e.host, from_version=e.from_version, to_version=e.to_version,
                  actor=e.actor, reason=e.reason, details=e.details, id=i, at=e.at or AT)
            for i, e in enumerate(entries, 1)]


def line(text: str, label: str) -> str:
    found = [x for x in text.splitlines() if x.startswith(f"**{label}:**")]
    assert found, text
    return found[0]


def unescaped_pipes(row: str) -> int:
    return len(re.findall(r"(?<!\\)\|", row))


# ---------------------------------------------------------------------------------------------
# 1. @name is a GitHub link and _x_ is emphasis on MLflow's page
# ---------------------------------------------------------------------------------------------

def test_mentions_and_emphasis_are_escaped_where_the_renderer_would_use_them():
    assert markdown_text("approved by @bob after review _urgent_ fix") == \
        "approved by \\@bob after review \\_urgent\\_ fix"
    assert markdown_text("@alice") == "\\@alice"
    # where showdown makes no link or emphasis, no backslash it would show: mid-word, e-mail, "(@"
    assert markdown_text("gpu_host_a rolled_back a@b (@c) @ x") == "gpu_host_a rolled_back a@b \\(@c\\) @ x"
    assert markdown_text("__init__ x_") == "\\_\\_init\\_\\_ x\\_"


def _with_mentions(deploy_reason: str, host_reason: str | None = None) -> str:
    """v1's block with @-names and _emphasis_ in its aliases, actor, reasons and host."""
    return description.render(
        version=1, tags={"validation_status": "passed", "deploy_status": "rolled_back",
                                    "deploy_reason": deploy_reason},
        aliases=("candidate", "production"),
        entries=rows(Entry("promote", "m", "ok", to_version=1, actor="@alice",
                           reason="approved by @bob after review _urgent_ fix"),
                     Entry("deploy", "m", "ok", host="gpu_host_a", to_version=1, reason=host_reason)))


def test_aliases_actors_and_reasons_are_not_mentions():
    text = _with_mentions("canary web_2 breach _now_")
    assert text.startswith("**v1** · \\@candidate, \\@production · validation passed · deploy rolled_back\n")
    assert "**Approved by:** \\@alice (promote none → v1 by \\@alice" in text
    assert "reason: approved by \\@bob after review \\_urgent\\_ fix" in text
    assert "gpu_host_a ok; reason: canary web_2 breach \\_now\\_" in text
    assert not re.search(r"(^|\s)@\w", text) and not re.search(r"(^|\s)_\w", text)


def _showdown_html(markdown: str) -> str:
    """``markdown`` as MLflow's page renders it: the showdown converter (github flavour) bundled
    in the installed MLflow's UI, run by node. Skips when node or the bundle is missing."""
    import mlflow

    node = shutil.which("node")
    build = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    chunks = [p for p in build.glob("*.js") if "ghMentions" in p.read_text(errors="replace")] if build.is_dir() else []
    if not node or not chunks:
        pytest.skip("SKIPPED LOUDLY: node or MLflow's bundled showdown is not available: the page's "
                    "rendering is not checked")
    script = """
globalThis.webpackChunk_mlflow_mlflow = [];
for (const f of JSON.parse(process.argv[1])) require(f);
let showdown = null;
for (const [, mods] of globalThis.webpackChunk_mlflow_mlflow) for (const k of Object.keys(mods)) {
  if (showdown) break;
  try {
    const m = {exports: {}}; mods[k](m, m.exports, () => ({}));
    if (m.exports && m.exports.Converter) showdown = m.exports;
  } catch (e) {}
}
const c = new showdown.Converter(); c.setFlavor('github');
process.stdout.write(c.makeHtml(require('fs').readFileSync(0, 'utf8')));
"""
    out = subprocess.run([node, "-e", script, json.dumps([str(p) for p in chunks])], input=markdown,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_mlflows_renderer_shows_the_text_as_written():
    text = _with_mentions("canary web_2 breach", "a | b ~~x~~ <b>x</b>")
    html = _showdown_html(description.compose("", text, "\n\nOwner note: ask carol"))
    assert "github.com" not in html and "<a " not in html and "<em>" not in html and "<del>" not in html, html
    assert "@candidate, @production" in html and "by @alice" in html
    assert "approved by @bob after review _urgent_ fix" in html
    assert "gpu_host_a" in html and "\\" not in html
    assert html.count("<table>") == 2 and "<h4" in html and "Owner note" in html


# ---------------------------------------------------------------------------------------------
# 2. MLflow on PostgreSQL refuses a description over 5,000 characters
# ---------------------------------------------------------------------------------------------

def _long_history() -> list[Entry]:
    entries = [Entry("promote", "m", "ok", from_version=1, to_version=2, actor="circleci-approver-name",
                     reason="release " + "x" * 140)]
    entries += [Entry("rollback", "m", "ok", from_version=2, to_version=1, actor="someone", reason=LONG_REASON % 1),
                Entry("promote", "m", "ok", from_version=1, to_version=2, actor="someone", reason=LONG_REASON % 2)] * 6
    entries += [Entry("smoke_test", "m", "failed", host=f"web-{i % 8}.prod.example.internal", to_version=2,
                      reason=LONG_REASON % (i % 8)) for i in range(300)]
    entries.append(Entry("deploy", "m", "failed", host="web-newest.prod.example.internal", to_version=2,
                         reason="the newest row"))
    return rows(*entries)


def test_a_long_history_stays_under_mlflows_limit_and_keeps_the_newest_rows():
    entries = _long_history()
    text = description.render(
        version=2, tags={"validation_status": "passed", "deploy_status": "failed",
                                    "deploy_reason": LONG_REASON % 1},
        aliases=("production",), entries=entries,
        run_url=RUN_URL, report_url=RUN_URL + "/artifacts/gate/report.html")
    whole = description.compose("", text, "")
    assert len(whole) <= description.BLOCK_LIMIT < description.DESCRIPTION_LIMIT, len(whole)
    newest = entries[-1]
    assert f"| #{newest.id} | " in text and "the newest row" in text            # the newest deploy row
    assert f"| #{entries[12].id} | " in text                                      # the newest move
    assert re.search(r"^\d+ older rows left out here; `mlops registry history` lists every row\.$", text, re.M)
    deploys_part = text[text.index("#### Deploys per host"):]
    shown = len(re.findall(r"^\| #\d+ ", deploys_part, re.M))
    left = int(re.search(r"^(\d+) older rows", deploys_part, re.M).group(1))
    assert shown + left == 301 and shown >= 1


def test_cells_are_cut_after_escaping_never_inside_an_escape():
    worst = "&" * 200
    cell = markdown_text(worst, limit=160)
    assert len(cell) <= 160 and cell.endswith("…") and re.fullmatch(r"(&amp;)+…", cell)
    assert re.fullmatch(r"(\\\|)+…", markdown_text("|" * 200, limit=160))     # no lone backslash before the cut
    text = description.render(
        version=2, tags={"validation_status": "passed", "deploy_status": "failed", "deploy_reason": worst},
        aliases=(), entries=rows(*[Entry("deploy", "m", "failed", host=worst, to_version=2, reason="|" * 200)] * 10,
                                 *[Entry("promote", "m", "ok", to_version=2, actor=worst, reason=worst)] * 10))
    assert len(description.compose("", text, "")) <= description.BLOCK_LIMIT, len(text)
    for row in (x for x in text.splitlines() if x.startswith("| #")):
        assert unescaped_pipes(row) == 7, row


# ---------------------------------------------------------------------------------------------
# 3. a person's own text is kept; ours is the marked block
# ---------------------------------------------------------------------------------------------

def test_only_the_marked_block_is_ours():
    block = "**v1** · no alias · validation passed · deploy deployed\n\nnew\n"
    written = description.compose("Above, by a person.\n\n", "**v1** old\n", "\n\nBelow, by a person.\n")
    above, below = description.others(written)
    again = description.compose(above, block, below)
    assert again == f"Above, by a person.\n\n{description.BEGIN}\n{block}\n{description.END}\n\nBelow, by a person.\n"
    assert description.compose(*[description.others(again)[0], block, description.others(again)[1]]) == again
    assert description.block(again) == block
    # no marker: a person's text stays below our block; one written whole by an older mlops goes
    note = "Owner note: ask bob before deleting."
    assert description.others(note) == ("", "\n\n" + note)
    old_ours = description.render(version=1, tags={}, aliases=(), entries=[])
    assert description.others(old_ours) == ("", "")
    assert description.others(None) == ("", "")
    # a marker deleted by hand: ours runs to the end / starts at the top
    assert description.others(f"note\n{description.BEGIN}\nold") == ("note\n", "")
    assert description.others(f"old\n{description.END}\nnote") == ("", "\nnote")


def test_a_persons_note_survives_a_promotion(make_version):
    model = os.environ["MLOPS_MODEL_NAME"]
    v1 = make_version(validation_status="passed")
    note = "Owner note: trained with the new augmentation; ask bob before deleting."
    rest().call("PATCH", "model-versions/update", body={"name": model, "version": str(v1), "description": note},
                what="test")
    promotion.promote(model, v1, actor="alice")
    written = versions.get_version(model, v1).description
    assert note in written and written.count(description.BEGIN) == 1
    assert description.block(written).startswith(f"**v{v1}** · \\@production")
    description.refresh(model, v1)
    assert versions.get_version(model, v1).description == written          # a refresh changes nothing


# ---------------------------------------------------------------------------------------------
# 4. @candidate left on a version that no longer holds it
# ---------------------------------------------------------------------------------------------

def test_candidate_marker_follows_the_alias(make_version):
    from registry.gate import run_gate
    from tests.test_registry_gate import Evaluations, doc

    model = os.environ["MLOPS_MODEL_NAME"]
    v1, v2 = make_version(), make_version()
    ev = Evaluations({v1: doc(0.93), v2: doc(0.95)})
    run_gate(model, v1, ev)
    assert "\\@candidate" in description.block(versions.get_version(model, v1).description).splitlines()[0]
    run_gate(model, v2, ev)                              # candidate moves v1 -> v2
    assert "candidate" not in description.block(versions.get_version(model, v1).description).splitlines()[0]
    promotion.promote(model, v2, actor="alice")
    info = versions.get_version(model, v2)
    assert info.aliases == ("production",)
    assert description.block(info.description).splitlines()[0].startswith(f"**v{v2}** · \\@production · ")


# ---------------------------------------------------------------------------------------------
# 5. hosts put back after a later wave failed
# ---------------------------------------------------------------------------------------------

def test_hosts_put_back_after_a_later_wave_failed_say_so():
    entries = rows(
        Entry("promote", "m", "ok", from_version=1, to_version=2, actor="alice"),
        Entry("deploy", "m", "ok", host="web-1", from_version=1, to_version=2),
        Entry("deploy", "m", "ok", host="web-2", from_version=1, to_version=2),
        Entry("smoke_test", "m", "failed", host="web-3", to_version=2, reason="golden outputs differ"),
        Entry("host_rollback", "m", "ok", host="web-3", from_version=2, to_version=1),
        Entry("host_rollback", "m", "ok", host="web-1", from_version=2, to_version=1),
        Entry("host_rollback", "m", "failed", host="web-2", from_version=2, to_version=1),
        Entry("deploy", "m", "failed", host="web-3", from_version=1, to_version=2, reason="web-3: smoke"),
        Entry("rollback", "m", "ok", host="web-3", from_version=2, to_version=1, details={"automatic": True}))
    text = description.render(version=2, tags={"validation_status": "passed", "deploy_status": "failed",
                                                          "deploy_reason": "web-3: smoke"}, aliases=(), entries=entries)
    assert line(text, "Deploy status").startswith(
        "**Deploy status:** failed — web-1 put back, web-2 put back failed, web-3 failed; reason:")
    assert "| web-1 | host_rollback v2 → v1 | ok |" in text
    # v1's page: the put-back rows are v2's story, v1's own deploys are unchanged
    v1 = description.render(version=1, tags={}, aliases=("production",), entries=entries)
    assert "put back" not in v1


# ---------------------------------------------------------------------------------------------
# 6. deploy_canary left over from an earlier deploy
# ---------------------------------------------------------------------------------------------

def test_every_deploy_tag_is_written_each_time(monkeypatch):
    written = []
    monkeypatch.setattr(versions, "set_tags", lambda model, version, tags: written.append(dict(tags)))
    monkeypatch.setattr(description, "refresh_quietly", lambda *a: None)
    deploys.tag("m", 1, deploys.FAILED, "web-1: bake: canary breach", canary="failed")
    deploys.tag("m", 1, deploys.DEPLOYED)          # one host / --bake 0 / a restore: no canary
    assert written == [{"deploy_status": "failed", "deploy_reason": "web-1: bake: canary breach",
                        "deploy_canary": "failed"},
                       {"deploy_status": "deployed", "deploy_reason": "none", "deploy_canary": "none"}]


# ---------------------------------------------------------------------------------------------
# 7. a forced promotion shows as forced
# ---------------------------------------------------------------------------------------------

def test_a_forced_promotion_says_so():
    entries = rows(
        Entry("gate", "m", "failed", from_version=1, to_version=2, details={"accuracy": 0.7, "failed_rules": ["x"]}),
        Entry("promote", "m", "ok", from_version=1, to_version=2, actor="alice", reason="hotfix",
              details={"forced": True, "approved_by": None, "validation_status": "failed"}))
    text = description.render(version=2, tags={"validation_status": "failed"}, aliases=("production",),
                              entries=entries)
    assert line(text, "Approved by") == ("**Approved by:** alice (**forced**: promote v1 → v2 by alice, "
                                         "2026-12-01 15:00 UTC, ledger #2; reason: hotfix)")
    assert "| #2 | 2026-12-01 15:00 | promote (**forced**) | v1 → v2 | alice | hotfix |" in text
    plain = description.render(version=2, tags={}, aliases=(),
                               entries=rows(Entry("promote", "m", "ok", to_version=2, actor="bob",
                                                  details={"forced": False})))
    assert "forced" not in plain


def test_a_promotion_that_moved_nothing_does_not_hide_the_move_that_did():
    """Found by a sweep (2026-12-04): `promote --version 1` while v1 already held production (after
    a rollback put it there) became the "Approved by" line, naming mallory's no-op instead."""
    entries = rows(
        Entry("promote", "m", "ok", from_version=None, to_version=1, actor="alice"),
        Entry("promote", "m", "ok", from_version=1, to_version=2, actor="alice"),
        Entry("rollback", "m", "ok", from_version=2, to_version=1, actor="root", reason="v2 slow"),
        Entry("promote", "m", "ok", from_version=1, to_version=1, actor="mallory", reason="noop"))
    text = description.render(version=1, tags={}, aliases=("production",), entries=entries)
    assert line(text, "Approved by") == ("**Approved by:** root (rollback v2 → v1 by root, 2026-12-01 15:00 UTC, "
                                         "ledger #3; reason: v2 slow)")
    assert "| #4 | 2026-12-01 15:00 | promote | v1 → v1 | mallory | noop |" in text   # still in the table
    only = description.render(version=1, tags={}, aliases=("production",), entries=entries[3:])
    assert "by mallory" in line(only, "Approved by")      # the alias set outside mlops: the no-op is all there is


def test_a_version_promoted_again_after_its_rollback_does_not_show_the_old_rollback_as_its_deploy():
    """Found by review (2026-12-06, seventeenth stop): v3 rolled back to v2 (that deploy tagged v3
    ``rolled_back``), then promoted again and not deployed yet: its page said "@production · deploy
    rolled_back", the old rollback's reason and "web-1 ok" as if that were its deploy now."""
    entries = rows(
        Entry("promote", "m", "ok", from_version=2, to_version=3, actor="ci"),
        Entry("deploy", "m", "ok", host="web-1", from_version=2, to_version=3),
        Entry("rollback", "m", "ok", from_version=3, to_version=2, actor="dave", reason="latency"),
        Entry("deploy", "m", "ok", host="web-1", from_version=3, to_version=2),
        Entry("promote", "m", "ok", from_version=2, to_version=3, actor="ci", reason="fixed"))
    tags = {"validation_status": "passed", "deploy_status": "rolled_back", "deploy_reason": "latency"}
    text = description.render(version=3, tags=tags, aliases=("production",), entries=entries)
    assert text.startswith("**v3** · \\@production · validation passed · deploy not deployed since its promote #5\n")
    assert line(text, "Deploy status") == ("**Deploy status:** not deployed since its promote #5 "
                                           "(2026-12-01 15:00 UTC); before it: rolled back (latency)")
    assert "| #2 | 2026-12-01 15:00 | web-1 | deploy | ok |  |" in text      # the earlier term's row stays
    # before the promotion it was rolled back, and says so
    before = description.render(version=3, tags=tags, aliases=(), entries=entries[:4])
    assert "deploy rolled_back\n" in before.splitlines()[0] + "\n"
    assert line(before, "Deploy status") == "**Deploy status:** rolled_back — web-1 replaced by v2; reason: latency"


def test_a_failed_deploys_automatic_revert_is_not_shown_as_a_persons_rollback():
    """Found by review (2026-12-06, seventeenth stop): after a canary breach, v1's page said
    "Approved by: test (rollback v2 → v1 by root, …; reason: file1: bake: canary …)" and its
    history "| rollback | v2 → v1 | root |": a rollback by the deploy's OS user, read as a person's."""
    entries = rows(Entry("promote", "m", "ok", to_version=1, actor="alice"),
                   Entry("promote", "m", "ok", from_version=1, to_version=2, actor="bob"),
                   Entry("rollback", "m", "ok", from_version=2, to_version=1, actor="root",
                         reason="web-1: bake: canary", details={"after_failed_deploy": 2, "automatic": True}),
                   Entry("rollback", "m", "ok", from_version=2, to_version=1, actor="dave", reason="slow"))
    text = description.render(version=1, tags={}, aliases=("production",), entries=entries[:3])
    assert line(text, "Approved by").startswith("**Approved by:** alice (**automatic**, after a failed deploy: "
                                                "rollback v2 → v1 by root")
    assert "| #3 | 2026-12-01 15:00 | rollback (**automatic**) | v2 → v1 | root | web-1\\: bake\\: canary |" in text
    person = description.render(version=1, tags={}, aliases=("production",), entries=entries[:2] + entries[3:])
    assert line(person, "Approved by").startswith("**Approved by:** dave (rollback v2 → v1 by dave")
    assert "automatic" not in person


# ---------------------------------------------------------------------------------------------
# 8. tags under their older names
# ---------------------------------------------------------------------------------------------

def test_tags_under_their_older_names_are_read():
    legacy = {"validation_status": "passed", "deploy_status": "failed", "dataset.name": "digits",
              "ci.pipeline_id": "77", "dataset.fingerprint": "abcdef0123456789", "deploy.reason": "web-1: smoke"}
    text = description.render(version=3, tags=legacy, aliases=(), entries=[])
    assert line(text, "Data set") == "**Data set:** digits (fingerprint `abcdef012345`)"
    assert line(text, "Commit") == "**Commit:** unknown · pipeline 77"
    assert line(text, "Deploy status") == "**Deploy status:** failed; reason: web-1\\: smoke"
    # the current name wins over the older one, as registry.tags.read (and `registry status`) reads it
    both = description.render(version=3, tags={**legacy, "dataset": "fashion_mnist"}, aliases=(), entries=[])
    assert line(both, "Data set").startswith("**Data set:** fashion_mnist")


# ---------------------------------------------------------------------------------------------
# 9. a re-created model's v1 does not inherit the old v1's story
# ---------------------------------------------------------------------------------------------

def test_rows_dated_before_the_version_was_created_are_still_its_own():
    """The rows ``render`` gets are the model's as MLflow holds it now (the ledger's cut, made once
    for every reader): a row's time is its writer's clock, and one dated before the version's
    creation (a CI runner behind the server) is still about it. Until the twenty-first stop a
    version registered outside mlops lost such rows from its page."""
    created = AT + timedelta(hours=1)
    behind = [Entry("promote", "m", "ok", to_version=1, actor="alice", reason="first release", at=AT),
              Entry("deploy", "m", "ok", host="web-1", to_version=1, at=AT)]
    after = [Entry("gate", "m", "passed", to_version=1, details={"accuracy": 0.9}, at=created + timedelta(seconds=5))]
    text = description.render(version=1, tags={}, aliases=(), entries=rows(*behind, *after), created_at=created)
    assert "**Approved by:** alice" in text and "web-1 ok" in text, text
    assert "**Validation:** passed" in text


def test_a_recreated_model_starts_a_new_story(make_version):
    model = os.environ["MLOPS_MODEL_NAME"]
    v1 = make_version(validation_status="passed")
    promotion.promote(model, v1, actor="alice", reason="first release")
    deploys.DeployLedger(model)("deploy", "ok", host="web-1", to_version=v1)
    deploys.tag(model, v1, deploys.DEPLOYED)
    rest().call("DELETE", "registered-models/delete", body={"name": model}, what="test")
    n1 = make_version()                      # a brand-new model of the same name: version 1 again
    assert n1 == v1 and any(e.actor == "alice" for e in Ledger().entries(model))
    written = versions.get_version(model, n1).description
    assert "alice" not in written and "web-1" not in written, written


def test_the_current_rows_come_from_the_registration_not_from_the_writers_clocks():
    """The version's rows start at its own ``register`` row (whose ``created_ms`` is the version's
    creation time, both the MLflow server's clock), not at rows whose writer's clock read later
    than the server's: a CI runner ten minutes behind hid the version's gate and promotion, and a
    deleted model's rows written by a laptop ahead of the server showed on the new v1's page
    (found by review, twentieth stop)."""
    from registry.ledger import CREATED_MS

    created = AT + timedelta(hours=1)
    ms = round(created.timestamp() * 1000)
    behind, ahead = created - timedelta(minutes=10), created + timedelta(minutes=10)
    old = [Entry("register", "m", "ok", to_version=1, details={CREATED_MS: ms - 3_600_000}, at=ahead),
           Entry("promote", "m", "ok", to_version=1, actor="alice", reason="old release", at=ahead),
           Entry("deploy", "m", "ok", host="web-9", to_version=1, at=ahead)]
    new = [Entry("register", "m", "ok", to_version=1, details={CREATED_MS: ms}, at=behind),
           Entry("gate", "m", "passed", to_version=1, details={"accuracy": 0.9}, at=behind),
           Entry("promote", "m", "ok", to_version=1, actor="bob", reason="new release", at=behind)]
    text = description.render(version=1, tags={}, aliases=("production",), entries=rows(*old, *new),
                              created_at=created)
    assert "**Approved by:** bob (promote none → v1 by bob" in text, text
    assert "**Validation:** passed — held-out accuracy 0.9000" in text
    assert "alice" not in text and "web-9" not in text and "no deploy yet" in text
    # no register row of its own (registered outside mlops): the deleted v1's registration is not
    # its (that row's CircleCI job was linked as this version's)
    job = "https://circleci.com/gh/o/r/41"
    earlier = Entry("register", "m", "ok", to_version=1, at=ahead,
                    details={CREATED_MS: ms - 3_600_000, "ci": {"ci.build_url": job}})
    text = description.render(version=1, tags={}, aliases=(), entries=rows(earlier, *new[1:]), created_at=created)
    assert job not in text and "**Links:** none" in text, text


def test_a_ledger_writer_behind_the_servers_clock_still_shows_on_the_page(make_version, monkeypatch):
    """The same on a real server: every ledger row written by a process whose clock is ten minutes
    behind the MLflow server's. The page said "nobody yet (never promoted)" and "(not gated yet)"
    for a gated, promoted version."""
    import registry.ledger as ledger_module
    from registry.gate import run_gate
    from tests.test_registry_gate import Evaluations, doc

    class Behind(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.now(tz) - timedelta(minutes=10)

    monkeypatch.setattr(ledger_module, "datetime", Behind)
    model = os.environ["MLOPS_MODEL_NAME"]
    v1 = make_version()
    run_gate(model, v1, Evaluations({v1: doc(0.93)}))
    promotion.promote(model, v1, actor="alice", reason="first release")
    written = versions.get_version(model, v1).description
    assert f"**Approved by:** alice (promote none → v{v1} by alice" in written, written
    assert "**Validation:** passed — held-out accuracy 0.9300" in written, written


def test_registry_status_and_reconcile_read_a_versions_rows_whatever_the_writers_clock(make_version, monkeypatch):
    """`registry status` and `registry reconcile` kept, for each version, only the rows whose time
    (the writer's clock) was not before the version's creation (the server's): with every ledger row
    written by a CI runner ten minutes behind the MLflow server, status showed the hand-edited
    ``approved_by`` and ``validation_status`` tags as they were, with no warning, and reconcile wrote
    nothing back (found by review, twenty-first stop). The rows are the model's (the ledger's cut),
    so every one about v<N> counts."""
    import registry.ledger as ledger_module

    class Behind(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.now(tz) - timedelta(minutes=10)

    monkeypatch.setattr(ledger_module, "datetime", Behind)
    model = os.environ["MLOPS_MODEL_NAME"]
    v1, v2 = _failed_gate_tagged_passed(model, make_version)
    versions.set_tags(model, v1, {"approved_by": "mallory"})                # the MLflow UI
    r = run_mlops("registry", "status", "--json")
    assert r.returncode == 0, r.stderr
    found = {x["version"]: x for x in json.loads(r.stdout)["versions"]}
    assert (found[v1]["approved_by"], found[v1]["approved_by_tag"]) == ("alice", "mallory"), found[v1]
    assert (found[v2]["validation_status"], found[v2]["validation_status_tag"]) == ("failed", "passed"), found[v2]
    r = run_mlops("registry", "reconcile", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["retagged_versions"] == [v1], r.stdout
    assert versions.get_version(model, v1).tags["approved_by"] == "alice"


def test_registry_status_ages_a_version_on_the_servers_clock_not_this_machines(make_version, monkeypatch):
    """The ``age`` column compared this machine's clock with the version's ``creation_timestamp``
    (the MLflow server's): a laptop three hours ahead showed a version registered a moment ago as
    ``3h`` old, one behind showed ``0s`` for as long as it was behind (found by review, twenty-first
    stop). The age is now on the server's clock (its answers' ``Date`` header)."""
    import registry.history as history

    class Ahead(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.now(tz) + timedelta(hours=3)

    model = os.environ["MLOPS_MODEL_NAME"]
    v1 = make_version()
    monkeypatch.setattr(history, "datetime", Ahead)
    row = next(r for r in history.status_rows(model) if r["version"] == v1)
    assert re.fullmatch(r"\d+s|[1-9]m", row["age"]), row
    assert rest().server_now() is not None            # the real server dates its answers
    server = rest().server_now()
    assert abs((server - datetime.now(timezone.utc)).total_seconds()) < 5


def test_the_first_line_says_the_last_gates_verdict_and_a_tag_that_disagrees_is_named():
    """A ``validation_status`` tag set to ``passed`` in the MLflow UI over a failed gate: the page's
    first line read "validation passed" above "**Validation:** failed" (found by review, twentieth
    stop). Rendered on plain data, then read back from a real server."""
    failed = Entry("gate", "m", "failed", to_version=2, from_version=1, reason="below production",
                   details={"accuracy": 0.80, "production_accuracy": 0.93, "tolerance": 0.01,
                            "failed_rules": ["accuracy_vs_production"]})
    text = description.render(version=2, tags={"validation_status": "passed"}, aliases=(), entries=rows(failed))
    assert text.startswith("**v2** · no alias · validation failed · deploy not deployed"), text
    assert "the `validation_status` tag says passed: changed outside mlops" in line(text, "Validation")
    agreeing = description.render(version=2, tags={"validation_status": "failed"}, aliases=(), entries=rows(failed))
    assert "tag says" not in agreeing and agreeing.startswith("**v2** · no alias · validation failed")


def _failed_gate_tagged_passed(model: str, make_version) -> tuple[int, int]:
    """v1 in production; v2 failed its gate against it, then tagged ``validation_status=passed``
    by hand (the MLflow UI)."""
    from registry.gate import run_gate
    from tests.test_registry_gate import Evaluations, doc

    v1 = make_version(validation_status="passed")
    promotion.promote(model, v1, actor="alice", reason="first release")
    v2 = make_version()
    run_gate(model, v2, Evaluations({v1: doc(0.95), v2: doc(0.80)}))
    versions.set_tags(model, v2, {"validation_status": "passed"})          # the MLflow UI
    return v1, v2


def test_a_validation_tag_edited_over_a_failed_gate_does_not_head_the_page(make_version):
    model = os.environ["MLOPS_MODEL_NAME"]
    v1, v2 = _failed_gate_tagged_passed(model, make_version)
    description.refresh(model, v2)
    written = description.block(versions.get_version(model, v2).description)
    assert written.startswith(f"**v{v2}** · no alias · validation failed"), written
    assert "the `validation_status` tag says passed" in written, written


def test_registry_status_shows_the_last_gates_verdict_and_warns_of_a_tag_that_disagrees(make_version):
    """`registry status`'s validation column showed the ``validation_status`` tag: set to ``passed``
    in the MLflow UI over a failed gate, the table read "passed" (found by review, twentieth stop).
    It now shows the last gate's verdict (the tag's without a gate row) and a warning line names the
    tag; ``--json`` keeps the tag in ``validation_status_tag``."""
    model = os.environ["MLOPS_MODEL_NAME"]
    v1, v2 = _failed_gate_tagged_passed(model, make_version)
    r = run_mlops("registry", "status")
    assert r.returncode == 0, r.stderr
    row = next(x for x in r.stdout.splitlines() if x.split()[:1] == [str(v2)])
    assert row.split()[1:3] == ["-", "failed"], r.stdout
    assert f"warning: v{v2}'s validation_status tag says passed but its last gate (ledger #" in r.stdout
    assert f"failed: the tag was changed outside mlops, or its write failed; `mlops registry gate --version {v2}`" \
        in r.stdout
    r = run_mlops("registry", "status", "--json")
    rows = {x["version"]: x for x in json.loads(r.stdout)["versions"]}
    assert (rows[v2]["validation_status"], rows[v2]["validation_status_tag"]) == ("failed", "passed")
    assert (rows[v1]["validation_status"], rows[v1]["validation_status_tag"]) == ("passed", None)     # no gate row


# ---------------------------------------------------------------------------------------------
# 10. a server without webhook support
# ---------------------------------------------------------------------------------------------

def test_webhook_support_decision():
    from registry.webhooks import NO_WEBHOOKS, unsupported

    assert unsupported(500, "FileStore").startswith(NO_WEBHOOKS)
    assert unsupported(500, "SqlStore") is None and unsupported(500, None) is None    # a failing server: retried
    assert unsupported(200, "FileStore") is None            # a separate SQL registry store holds them


@pytest.fixture
def file_store_mlflow(tmp_path, mlops_env, monkeypatch):
    """An MLflow server on a file store (no webhooks), for this test only."""
    from mlops.detached_service import stop_service
    from mlops.local_services import start_mlflow
    from mlops.ports import free_port

    state = tmp_path / "fs-mlflow"
    state.mkdir()
    svc = start_mlflow(state, port=free_port(), backend_store_uri=f"file://{tmp_path / 'mlruns'}",
                       env={**os.environ, "MLFLOW_ALLOW_FILE_STORE": "true"})
    monkeypatch.setenv("MLFLOW_TRACKING_URI", svc.url)
    yield svc.url
    stop_service(state, "mlflow-server")


def test_webhook_create_on_a_file_store_says_so_at_once(file_store_mlflow):
    """"At once": without MLflow's retries. Those are made long here (backoff 8 s: 16 + 32 + 64 s of
    waits), so a retry shows as minutes; a fixed 12 s bound also counted the start-up of Python and
    mlflow, which took 14-17 s on a loaded machine."""
    t0 = time.monotonic()
    r = run_mlops("registry", "webhook", "create", "--url", "https://hooks.example.com/x", timeout=240,
                  env={"MLOPS_WEBHOOK_SECRET": "whsec-" + "k" * 32, "MLFLOW_TRACKING_URI": file_store_mlflow,
                       "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "8"})
    took = time.monotonic() - t0
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: this MLflow server does not support webhooks (it needs a SQL backend store)"), last
    assert "lost the connection" not in r.stderr and took < 60, (took, r.stderr[-2000:])


def test_a_server_that_keeps_failing_is_not_called_unreachable(monkeypatch):
    from mlflow.exceptions import MlflowException

    from mlops_common.errors import ConnectionFailure
    from registry.client import mlflow_errors

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    with pytest.raises(ConnectionFailure) as caught, mlflow_errors("creating the MLflow webhook"):
        raise MlflowException("API request to endpoint /api/2.0/mlflow/webhooks failed with exception "
                              "HTTPConnectionPool(host='127.0.0.1', port=5000): Max retries exceeded with url: "
                              "/api/2.0/mlflow/webhooks (Caused by ResponseError('too many 500 error responses'))")
    said = caught.value.message
    assert "kept answering HTTP errors" in said and "check that it is running" not in said


# ---------------------------------------------------------------------------------------------
# 7. a failed deploy whose failed row is written after the tag that refreshed the description
# ---------------------------------------------------------------------------------------------

def test_the_description_shows_a_failed_deploy_that_moved_no_production(make_version):
    """A ``--version`` deploy that failed, and a failed deploy whose production had moved on
    meanwhile, tagged the version (which rebuilt its description) before writing the failed
    ``deploy`` row: the page said ``deploy failed`` with no host and no row saying where or why."""
    from types import SimpleNamespace

    from serving_sync import deploy_failure, fleet

    model = os.environ["MLOPS_MODEL_NAME"]
    v1, v2, v3 = (make_version(validation_status="passed") for _ in range(3))
    promotion.promote(model, v1, actor="alice")

    def failed_on(host: str, version: int, source: str) -> str:
        run = SimpleNamespace(host=SimpleNamespace(name=host), plan=SimpleNamespace(current=v1))
        deploy_failure.registry_after_failure(fleet.FleetResult(model, version, source, "failed"),
                                              deploys.DeployLedger(model), run, "golden outputs differ",
                                              "smoke_validation", kept_because=None)
        return versions.get_version(model, version).description

    text = failed_on("web-7", v2, "--version")                    # production not involved
    assert line(text, "Deploy status").startswith("**Deploy status:** failed — web-7 failed; reason:"), text
    assert re.search(r"^\| #\d+ \| [^|]+ \| web-7 \| deploy \| failed \| web-7\\: smoke_validation\\: golden", text,
                     re.M), text

    promotion.promote(model, v3, actor="alice")                   # production is v3, not the failed one
    text = failed_on("web-8", v3, "production")
    promotion.promote(model, v1, actor="bob", reason="back to v1 by hand")
    text = failed_on("web-9", v3, "production")                    # production moved on: left alone
    assert versions.production_version(model) == v1
    assert line(text, "Deploy status").startswith("**Deploy status:** failed — web-8 failed, web-9 failed"), text
    assert re.search(r"^\| #\d+ \| [^|]+ \| web-9 \| deploy \| failed \|", text, re.M), text


# ---------------------------------------------------------------------------------------------
# 8. a person's description of the registered model
# ---------------------------------------------------------------------------------------------

def test_a_persons_description_of_the_registered_model_survives_the_next_registration(make_version):
    """Every registration wrote the registered model's fixed description over whatever it had: an
    owner's note written on the model's page in the MLflow UI was gone at the next `mlops train`.
    Ours is a marked block now, as on a version; an older unmarked one of ours is replaced whole."""
    model = os.environ["MLOPS_MODEL_NAME"]
    make_version()

    def written() -> str:
        return rest().get("registered-models/get", {"name": model}, what="test")["registered_model"]["description"]

    assert description.block(written()) == description.MODEL_DESCRIPTION + "\n"
    note = "Owner: team vision (#vision-oncall). Do not delete versions before 2027."
    rest().call("PATCH", "registered-models/update", body={"name": model, "description": note}, what="test")
    make_version()
    text = written()
    assert note in text and text.count(description.BEGIN) == 1, text
    assert description.block(text) == description.MODEL_DESCRIPTION + "\n"
    make_version()
    assert written() == text                                   # nothing changes a second time
    # a description an older mlops wrote (ours, unmarked) is replaced, not kept as a person's
    older = description.MODEL_DESCRIPTION.replace("10 classes.", "10 classes (old wording).")
    rest().call("PATCH", "registered-models/update", body={"name": model, "description": older}, what="test")
    make_version()
    assert written() == description.compose("", description.MODEL_DESCRIPTION + "\n", "")


# ---------------------------------------------------------------------------------------------
# 9. infra-validate's verdict, read by the approver before pressing Approve
# ---------------------------------------------------------------------------------------------

def test_the_description_shows_infra_validation_once_it_is_recorded(make_version):
    """`sync infra-validate` tagged the version and wrote its `smoke_test` row, but nothing rebuilt
    the description: the page the approver opens at the `hold` step said "no deploy yet" until
    the promotion, and a failure's reason was on no page."""
    from serving_sync import infra

    model = os.environ["MLOPS_MODEL_NAME"]
    v = make_version(validation_status="passed")
    infra.record(infra.InfraResult(model, v, "docker", passed=False,
                                   error="version 1 did not become AVAILABLE within 120s"))
    text = versions.get_version(model, v).description
    assert re.search(r"^\| #\d+ \| [^|]+ \| infra-validate\\:docker \| smoke_test \| failed \| version 1 did not "
                     r"become AVAILABLE within 120s \|$", text, re.M), text


# ---------------------------------------------------------------------------------------------
# 10. an `approved_by` tag edited outside mlops: the ledger's approver wins, the edit shows
# ---------------------------------------------------------------------------------------------

def test_the_ledger_says_who_approved_and_a_tag_that_disagrees_is_shown_as_edited():
    entries = rows(Entry("promote", "m", "ok", to_version=1, actor="ci", details={"approved_by": "alice"}),
                   Entry("promote", "m", "ok", from_version=1, to_version=2, actor="bob"),
                   Entry("rollback", "m", "ok", from_version=2, to_version=1, actor="runner",
                         reason="deploy failed", details={"after_failed_deploy": 2, "automatic": True}),
                   Entry("promote", "m", "ok", from_version=1, to_version=1, actor="mallory"))
    # the automatic revert and the no-op keep who let v1 in, as they keep its tag
    for tags in ({"approved_by": "alice"}, {}):
        text = description.render(version=1, tags=tags, aliases=("production",), entries=entries)
        assert line(text, "Approved by") == ("**Approved by:** alice (**automatic**, after a failed deploy: "
                                             "rollback v2 → v1 by runner, "
                                             "2026-12-01 15:00 UTC, ledger #3; reason: deploy failed)")
    edited = description.render(version=1, tags={"approved_by": "@mallory"}, aliases=("production",),
                                entries=entries)
    assert line(edited, "Approved by").startswith("**Approved by:** alice (**automatic**, after a failed deploy: "
                                                  "rollback v2 → v1 by runner")
    assert line(edited, "Approved by").endswith(
        "deploy failed) — the `approved_by` tag says \\@mallory: changed outside mlops")
    assert description.approval({"approved_by": "x"}, [], 1) == ("x", None)   # no row: the tag is all there is


def test_an_approved_by_tag_edited_in_the_registry_does_not_rewrite_who_approved(make_version):
    """A known limit until the seventh stop: the description's "Approved by" was the version's
    `approved_by` tag, which anyone with write access to the registry can set (MLflow UI or API),
    over the ledger's append-only row. The ledger's approver is shown now, with the tag's if it
    says someone else; `registry status` says the same; `registry reconcile` writes them back
    (production's only until the eighth stop: see the next test)."""
    model = os.environ["MLOPS_MODEL_NAME"]
    v1, v2 = make_version(validation_status="passed"), make_version(validation_status="passed")
    for v, who in ((v1, "alice"), (v2, "bob")):
        assert run_mlops("registry", "promote", "--version", str(v), "--actor", who).returncode == 0
    for v, who in ((v1, "mallory"), (v2, "eve")):             # as the MLflow UI writes a tag
        rest().call("POST", "model-versions/set-tag", body={"name": model, "version": str(v), "key": "approved_by",
                                                            "value": who}, what="test")
    deploys.tag(model, v2, deploys.DEPLOYED)                   # a later step rebuilds the descriptions
    description.refresh(model, v1)
    for v, who, edited in ((v1, "alice", "mallory"), (v2, "bob", "eve")):
        text = versions.get_version(model, v).description
        assert line(text, "Approved by").startswith(f"**Approved by:** {who} (promote "), text
        assert line(text, "Approved by").endswith(f" — the `approved_by` tag says {edited}: changed outside mlops")
    r = run_mlops("registry", "status", "--json")
    assert r.returncode == 0, r.stderr
    shown = {d["version"]: (d["approved_by"], d["approved_by_tag"]) for d in json.loads(r.stdout)["versions"]}
    assert shown == {v1: ("alice", "mallory"), v2: ("bob", "eve")}
    r = run_mlops("registry", "status")
    assert r.returncode == 0 and (f"warning: v{v1}'s approved_by tag says mallory but the ledger records alice: "
                                  f"the tag was changed outside mlops") in r.stdout, r.stdout
    r = run_mlops("registry", "reconcile", "--actor", "carol")
    assert r.returncode == 0 and "written again" in r.stdout, r.stdout + r.stderr
    info = versions.get_version(model, v2)
    assert info.tags["approved_by"] == "bob" and "changed outside mlops" not in info.description
    after = {d["version"]: (d["approved_by"], d["approved_by_tag"])
             for d in json.loads(run_mlops("registry", "status", "--json").stdout)["versions"]}
    assert after == {v1: ("alice", None), v2: ("bob", None)}


def test_status_flags_and_reconcile_restores_an_edited_or_removed_approved_by_on_every_promoted_version(
        make_version):
    """Left at the seventh stop: `registry reconcile` wrote back the `approved_by` tag of the
    version in production only (an older version that was once promoted kept the edit, though its
    ledger rows name who approved it), and a tag removed in the registry was neither flagged by
    `registry status` nor restored. Now every version whose ledger names an approver is flagged
    and restored, edited or removed; a version the ledger says nothing about is left as it is."""
    from registry.client import tracking_client

    model = os.environ["MLOPS_MODEL_NAME"]
    v1, v2, v3 = (make_version(validation_status="passed") for _ in range(3))
    for v, who in ((v1, "alice"), (v2, "bob")):
        assert run_mlops("registry", "promote", "--version", str(v), "--actor", who).returncode == 0
    client = tracking_client()                                 # as the MLflow UI (or API) does it
    client.set_model_version_tag(model, str(v1), "approved_by", "mallory")   # v1: once promoted, not now
    client.delete_model_version_tag(model, str(v2), "approved_by")          # v2: production
    client.set_model_version_tag(model, str(v3), "approved_by", "zed")      # v3: the ledger says nothing

    r = run_mlops("registry", "status")
    assert r.returncode == 0, r.stderr
    warnings = [x for x in r.stdout.splitlines() if "approved_by tag" in x]
    assert warnings == [                                        # newest first, as the table
        f"warning: v{v2}'s approved_by tag is missing but the ledger records bob: the tag was removed outside "
        f"mlops, or a move's tag write failed; `mlops registry reconcile` writes it back",
        f"warning: v{v1}'s approved_by tag says mallory but the ledger records alice: the tag was changed "
        f"outside mlops (its description shows the ledger's)"], r.stdout
    r = run_mlops("registry", "status", "--json")
    assert r.returncode == 0, r.stderr
    shown = {d["version"]: (d["approved_by"], d["approved_by_tag"], d["approved_by_tag_missing"])
             for d in json.loads(r.stdout)["versions"]}
    assert shown == {v1: ("alice", "mallory", False), v2: ("bob", None, True), v3: ("zed", None, False)}

    r = run_mlops("registry", "reconcile", "--actor", "carol")
    assert r.returncode == 0 and "written again" in r.stdout, r.stdout + r.stderr
    assert f"the approved_by tag of v{v2}, v{v1} did not say who the ledger records" in r.stdout, r.stdout
    after = {v: versions.get_version(model, v) for v in (v1, v2, v3)}
    assert {v: i.tags.get("approved_by") for v, i in after.items()} == {v1: "alice", v2: "bob", v3: "zed"}
    assert "changed outside mlops" not in after[v1].description
    assert versions.production_version(model) == v2
    r = run_mlops("registry", "status")
    assert r.returncode == 0 and "approved_by tag" not in r.stdout, r.stdout
    r = run_mlops("registry", "reconcile", "--actor", "carol")              # in agreement: nothing to write
    assert r.returncode == 0 and "nothing recorded" in r.stdout and "written again" not in r.stdout, r.stdout


def test_registry_status_does_not_show_a_version_promoted_again_as_rolled_back(make_version):
    """Found by review (2026-12-06, seventeenth stop): v2 rolled back to v1 (that deploy tagged v2
    ``rolled_back``), then promoted again and not deployed: `registry status` said
    "2  production  passed  rolled_back", as its page did."""
    model = os.environ["MLOPS_MODEL_NAME"]
    v1, v2 = (make_version(validation_status="passed") for _ in range(2))
    for v in (v1, v2):
        promotion.promote(model, v, actor="alice")
        deploys.tag(model, v, deploys.DEPLOYED)
    promotion.rollback(model, actor="dave", reason="latency")
    deploys.tag(model, v2, deploys.ROLLED_BACK, "latency")
    r = run_mlops("registry", "status")
    assert r.returncode == 0 and re.search(rf"^{v2}\s+-\s+passed\s+rolled_back\s", r.stdout, re.M), r.stdout
    again = promotion.promote(model, v2, actor="alice", reason="fixed")
    r = run_mlops("registry", "status")
    assert r.returncode == 0, r.stderr
    row = next(x for x in r.stdout.splitlines() if x.startswith(f"{v2} "))
    assert re.match(rf"{v2}\s+production\s+passed\s+not deployed since #{again.ledger_id}\s", row), r.stdout
    r = run_mlops("registry", "status", "--json")
    doc = {d["version"]: d for d in json.loads(r.stdout)["versions"]}
    assert doc[v2]["deploy_status"] == "rolled_back" and doc[v2]["not_deployed_since"] == again.ledger_id
    assert doc[v1]["deploy_status"] == "deployed" and doc[v1]["not_deployed_since"] is None
    assert "deploy not deployed since its promote" in description.block(versions.get_version(model, v2).description)


def test_a_hosts_two_smoke_rows_say_which_side_of_its_switch_they_checked():
    """Found by review (seventeenth stop): "Deploys per host" listed two `smoke_test` rows per host
    (the check before the switch and the one after it) with nothing to tell them apart."""
    entries = rows(Entry("smoke_test", "m", "passed", host="web-1", to_version=2,
                         details={"route": "validation", "when": "before the switch"}),
                   Entry("smoke_test", "m", "passed", host="web-1", to_version=2,
                         details={"route": "stable", "when": "after the switch"}),
                   Entry("smoke_test", "m", "passed", host="infra-validate:local", to_version=2))
    text = description.render(version=2, tags={"validation_status": "passed", "deploy_status": "deployed"},
                              aliases=("production",), entries=entries, run_url=RUN_URL, report_url=None)
    deploys_part = text[text.index("#### Deploys per host"):]
    assert "| web-1 | smoke_test before the switch | passed |" in deploys_part, deploys_part
    assert "| web-1 | smoke_test after the switch | passed |" in deploys_part, deploys_part
    assert "| infra-validate\\:local | smoke_test | passed |" in deploys_part, deploys_part


def test_a_versions_description_reads_only_its_own_ledger_rows(make_version, monkeypatch):
    """A description is rebuilt after every register, gate, move and deploy-status write, and
    read every row of the model: in a ledger of years (100,000 deploy rows took 4 s to read here),
    each deploy waited seconds per refresh, and a reconcile that restored many tags minutes. The
    database now picks the rows about the version; the block says the same."""
    import registry.ledger as ledger_module

    model = os.environ["MLOPS_MODEL_NAME"]
    v1, v2 = make_version(validation_status="passed"), make_version(validation_status="passed")
    promotion.promote(model, v1, actor="alice")
    before = description.block(versions.get_version(model, v1).description)
    other = [Entry("deploy", model, "ok", from_version=v1 + 10, to_version=v2 + 10, host=f"h{i}", actor="ci")
             for i in range(300)]
    Ledger().append_all(other)
    mine = [e for e in Ledger().entries(model) if v1 in (e.from_version, e.to_version)]
    read = []
    real = ledger_module._from_row
    monkeypatch.setattr(ledger_module, "_from_row", lambda row: read.append(row) or real(row))
    text = description.refresh(model, v1)
    assert len(read) == len(mine), f"read {len(read)} ledger rows for the {len(mine)} about v{v1}"
    assert description.block(text) == before


def test_a_host_a_later_deploy_took_from_the_version_is_not_shown_as_serving_it():
    """Found by review (2026-12-07, nineteenth stop): after v2's rollback was deployed, v2's page
    said "rolled_back — web-1 ok, web-2 ok", and after v2 replaced v1 everywhere v1's said
    "deployed — web-1 ok, web-2 ok": each host's last deploy *of that version*, read as where it
    serves; the deploys that switched the hosts away were on no table of its page."""
    entries = rows(
        Entry("promote", "m", "ok", from_version=None, to_version=1, actor="alice"),
        Entry("deploy", "m", "ok", host="web-1", from_version=None, to_version=1),
        Entry("deploy", "m", "ok", host="web-2", from_version=None, to_version=1),
        Entry("promote", "m", "ok", from_version=1, to_version=2, actor="bob"),
        Entry("deploy", "m", "ok", host="web-1", from_version=1, to_version=2),
        Entry("deploy", "m", "ok", host="web-2", from_version=1, to_version=2))
    v1 = description.render(version=1, tags={"validation_status": "passed", "deploy_status": "deployed"},
                            aliases=(), entries=entries)
    assert line(v1, "Deploy status") == "**Deploy status:** deployed — web-1 replaced by v2, web-2 replaced by v2"
    assert "| #5 | 2026-12-01 15:00 | web-1 | deploy v1 → v2 | ok |  |" in v1, v1

    rolled = entries + rows(*[Entry("deploy", "m", "ok")] * 6,
                            Entry("rollback", "m", "ok", from_version=2, to_version=1, actor="dave", reason="latency"),
                            Entry("deploy", "m", "ok", host="web-1", from_version=2, to_version=1),
                            Entry("deploy", "m", "ok", host="web-2", from_version=2, to_version=1))[6:]
    tags = {"validation_status": "passed", "deploy_status": "rolled_back", "deploy_reason": "latency"}
    v2 = description.render(version=2, tags=tags, aliases=(), entries=rolled)
    assert line(v2, "Deploy status") == ("**Deploy status:** rolled_back — web-1 replaced by v1, web-2 replaced "
                                         "by v1; reason: latency")
    assert "| #8 | 2026-12-01 15:00 | web-1 | deploy v2 → v1 | ok |  |" in v2, v2
    # the version rolled back to serves again: its own deploys say so
    v1_again = description.render(version=1, tags={"deploy_status": "deployed"}, aliases=("production",),
                                  entries=rolled)
    assert line(v1_again, "Deploy status") == "**Deploy status:** deployed — web-1 ok, web-2 ok"
    # a host switched to v2 and put back to v1 (a later wave failed) serves v1: not replaced
    put_back = entries[:4] + rows(*[Entry("deploy", "m", "ok")] * 4,
                                  Entry("deploy", "m", "ok", host="web-1", from_version=1, to_version=2),
                                  Entry("host_rollback", "m", "ok", host="web-1", from_version=2, to_version=1),
                                  Entry("deploy", "m", "failed", host="web-2", from_version=1, to_version=2))[4:]
    v1_kept = description.render(version=1, tags={"deploy_status": "deployed"}, aliases=("production",),
                                 entries=put_back)
    assert line(v1_kept, "Deploy status") == "**Deploy status:** deployed — web-1 ok, web-2 ok"


def test_a_deploy_rebuilds_the_page_of_the_version_it_replaced(deploy_env):
    """The deploy that switches the hosts from v1 to v2 rewrites v1's page too (it was last rebuilt
    at the promotion, before any host moved)."""
    env = deploy_env
    env.add_host("file")
    v1, v2 = env.register("a"), env.register("b")
    env.promote(v1)
    assert env.deploy().status == "deployed"
    env.promote(v2)
    assert env.deploy().status == "deployed"
    text = description.block(versions.get_version(env.model, v1).description)
    assert line(text, "Deploy status").endswith(f" replaced by v{v2}"), text


def test_a_failed_gates_line_gives_the_figures_behind_its_failed_rules():
    """Found by review (2026-12-07, nineteenth stop): the demo's retrain on a good batch read
    "failed — held-out accuracy 0.9222 vs 0.8867 for production v1; failed rules:
    class_accuracy_vs_production": better than production, and no word of which class failed or by
    how much (the gate row holds it: ``details.per_class``); an accuracy rule's failure did not name
    the allowed drop, nor a minimum accuracy's failure the minimum."""
    per_class = {"compared": 10, "breached": 2, "listed": "all 2 breached; of 10 classes compared",
                 "classes": [{"class": "8", "candidate": 0.6957, "production": 0.8913, "allowed_drop": 0.1662,
                              "breached": True},
                             {"class": "3", "candidate": 0.7, "production": 0.8, "allowed_drop": 0.05,
                              "breached": True},
                             {"class": "1", "candidate": 0.87, "production": 0.74, "allowed_drop": 0.2,
                              "breached": False}]}
    gate = Entry("gate", "m", "failed", from_version=1, to_version=2,
                 details={"accuracy": 0.8756, "production_accuracy": 0.9222, "tolerance": 0.0279,
                          "failed_rules": ["min_accuracy", "accuracy_vs_production", "class_accuracy_vs_production"],
                          "rules_changed": {"min_accuracy": 0.9}, "per_class": per_class})
    text = description.render(version=2, tags={"validation_status": "failed"}, aliases=(), entries=rows(gate))
    validation = line(text, "Validation")
    assert validation.startswith(
        "**Validation:** failed — held-out accuracy 0.8756 vs 0.9222 for production v1; failed rules: min_accuracy, "
        "accuracy_vs_production, class_accuracy_vs_production — minimum accuracy 0.90; accuracy drop 0.0466, "
        "allowed 0.0279; classes over their allowed drop: class 8 0\\.696 vs 0\\.891 \\(-0\\.196; allowed "
        "0\\.166\\), class 3 0\\.700 vs 0\\.800 \\(-0\\.100; allowed 0\\.050\\); gate rules"), validation
    assert "class 1" not in validation                      # within its allowed drop
    # the default minimum when the rules were not changed; a row of an older gate without figures is as before
    gate.details.update(failed_rules=["min_accuracy"], rules_changed={})
    assert "failed rules: min_accuracy — minimum accuracy 0.80 (gate " in line(
        description.render(version=2, tags={}, aliases=(), entries=rows(gate)), "Validation")
    old = Entry("gate", "m", "failed", from_version=1, to_version=2,
                details={"accuracy": 0.81, "failed_rules": ["class_accuracy_vs_production"]})
    assert line(description.render(version=2, tags={}, aliases=(), entries=rows(old)), "Validation").endswith(
        "failed rules: class_accuracy_vs_production (gate 2026-12-01 15:00 UTC, ledger #1)")


def test_a_gate_run_while_the_version_held_production_says_it_compared_with_nothing():
    """Found by review (2026-12-07, nineteenth stop): v3 failed its gate against v1 (class 8 -0.370),
    was moved to production outside mlops, and gated again: with no baseline only the absolute
    rules apply, it passed, and its page read "Validation: passed — held-out accuracy 0.8756" as a
    first version's does, the failed comparison with production nowhere on it."""
    failed = Entry("gate", "m", "failed", from_version=1, to_version=3,
                   details={"accuracy": 0.8756, "production_accuracy": 0.8867,
                            "failed_rules": ["class_accuracy_vs_production"]})
    again = Entry("gate", "m", "passed", from_version=None, to_version=3,
                  details={"accuracy": 0.8756, "failed_rules": [], "gated_production": True})
    text = description.render(version=3, tags={"validation_status": "passed"}, aliases=("production",),
                              entries=rows(failed, again))
    assert line(text, "Validation") == (
        "**Validation:** passed — held-out accuracy 0.8756, gated while it held production (no baseline: only the "
        "absolute rules applied; its last gate against production: failed against v1, ledger #1) "
        "(gate 2026-12-01 15:00 UTC, ledger #2)")
    first = description.render(version=3, tags={}, aliases=(), entries=rows(again))
    assert "(no baseline: only the absolute rules applied) (gate " in line(first, "Validation")
    # a first version's gate (no production at all) reads as before
    alone = Entry("gate", "m", "passed", from_version=None, to_version=1, details={"accuracy": 0.93})
    assert line(description.render(version=1, tags={}, aliases=(), entries=rows(alone)), "Validation") == \
        "**Validation:** passed — held-out accuracy 0.9300 (gate 2026-12-01 15:00 UTC, ledger #1)"


def test_the_data_set_line_names_the_version_retrained_from_as_every_other_line_does():
    """Found by review (2026-12-07, nineteenth stop): "retrained from 1" where the rest of the page
    writes "v1"; a retrain from scratch keeps its word."""
    text = description.render(version=2, tags={"dataset": "digits", "retrained_from": "1"}, aliases=(), entries=[])
    assert line(text, "Data set") == "**Data set:** digits; retrained from v1"
    scratch = description.render(version=2, tags={"dataset": "digits", "retrained_from": "scratch"}, aliases=(),
                                 entries=[])
    assert line(scratch, "Data set") == "**Data set:** digits; retrained from scratch"


def test_reconcile_help_says_it_writes_back_an_edited_approved_by_when_the_alias_agrees(capsys):
    """Found by a review (2026-12-07, nineteenth stop): `registry reconcile --help` said "Changes
    nothing when they agree", but when the alias and the ledger agree it still writes back every
    `approved_by` tag edited or removed outside mlops (as `registry status` tells the reader to run
    it for): a person reading the help took it for a read-only check. The help says what it writes."""
    from mlops.cli import build_parser  # the parser `mlops` runs: its help, without a process start

    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["registry", "reconcile", "--help"])
    out = capsys.readouterr()
    assert done.value.code == 0, out.err
    text = " ".join(out.out.split())
    assert "Changes nothing when they agree" not in text, text
    assert "approved_by" in text and "writes back" in text, text
