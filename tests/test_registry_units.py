"""Small pure helpers of the registry: approval picking, API base URL, ages and tables (fast)."""
from __future__ import annotations

import contextlib
import json
from datetime import datetime, timedelta, timezone

import pytest

from mlops_common.errors import ConfigError
from registry.approver import api_base, pick_approval
from registry.history import age, history_table, table
from registry.ledger import Entry


def test_pick_approval_takes_the_approved_approval_job():
    jobs = [{"type": "build", "name": "train", "approved_by": None},
            {"type": "approval", "name": "hold", "status": "on_hold"},
            {"type": "approval", "name": "hold-2", "approved_by": "u1", "stopped_at": "2026-01-01T10:00:00Z"},
            {"type": "approval", "name": "hold-3", "approved_by": "u2", "stopped_at": "2026-01-01T11:00:00Z"}]
    assert pick_approval(jobs)["name"] == "hold-3"
    assert pick_approval(jobs[:2]) is None
    assert pick_approval([]) is None



def test_pick_approval_reads_approval_jobs_only_and_orders_unstopped_ones_by_start():
    """Found by hand mutation (2026-12-05, fifth stop)."""
    jobs = [{"type": "approval", "name": "early", "approved_by": "u1", "started_at": "2026-01-01T09:00:00Z"},
            {"type": "approval", "name": "late", "approved_by": "u2", "started_at": "2026-01-01T12:00:00Z"},
            {"type": "build", "name": "promote", "approved_by": "u3", "stopped_at": "2026-01-02T00:00:00Z"}]
    assert pick_approval(jobs)["name"] == "late"


def test_the_rollback_a_pipeline_was_triggered_for_is_read_from_its_compiled_config():
    """The value of `rollback-to` as CircleCI compiled it into the rollback job (GET
    /pipeline/{id}/config `compiled`), for the repository's own config: empty (null, '', or <nil>
    as a job receives it) is the previous version; then the rule that ties the approval to it."""
    from mlops_common.errors import RefusedError
    from registry.approver import rollback_to_in_config
    from registry.move_checks import check_rollback_tie
    from tests.lab.circleci import compiled_config, load_config, pipeline_values, substitute

    def compiled(**params):
        config = load_config()
        return compiled_config(substitute(config, pipeline_values(config, params, pipeline_id="p")))

    assert rollback_to_in_config(compiled(**{"run-rollback": True, "rollback-to": "3"})) == ["3"]
    assert rollback_to_in_config(compiled(**{"run-rollback": True})) == [""]
    for text, found in (("jobs: {a: {environment: {ROLLBACK_TO: 4}}}", ["4"]),
                        ("jobs: {a: {steps: [{run: {environment: {ROLLBACK_TO: null}}}]}}", [""]),
                        ("jobs: {a: {steps: [{run: {environment: {ROLLBACK_TO: '<nil>'}}}, checkout]}}", [""]),
                        ("jobs: {a: {steps: [{run: echo}]}}", []), ("version: 2", []),
                        ("[1, 2]", None), ("{a: [", None)):
        assert rollback_to_in_config(text) == found, text
    check_rollback_tie(3, ["3"], "w", "p")
    check_rollback_tie(None, [""], "w", "p")
    for requested, asked, words in ((2, ["3"], "for a rollback to version 3 (pipeline p was triggered with "
                                                "rollback-to=3), not to version 2"),
                                    (None, ["3"], "not to the previous production version"),
                                    (3, [""], "for a rollback to the previous production version"),
                                    (3, [], "sets no rollback-to"), (3, ["3", "4"], "is ambiguous"),
                                    (3, ["three"], "rollback-to 'three', not a version number")):
        with pytest.raises(RefusedError, match=words.replace("(", r"\(").replace(")", r"\)")):
            check_rollback_tie(requested, asked, "w", "p")


def test_pick_approval_compares_times_as_timestamps_with_a_stable_tiebreak():
    """A known limit of the fifth stop, fixed at the seventh: the times were compared as text, so
    in the same second ``…:00Z`` sorted after ``…:00.500Z`` (``Z`` > ``.``), and another offset
    sorted by its digits. CircleCI's times are RFC 3339 (seconds, sometimes milliseconds)."""
    def job(name, stopped=None, started=None, jid=None):
        return {"type": "approval", "name": name, "approved_by": "u", "stopped_at": stopped,
                "started_at": started, "id": jid or name}

    same_second = [job("first", "2026-01-01T10:00:00Z"), job("second", "2026-01-01T10:00:00.500Z")]
    assert pick_approval(same_second)["name"] == "second"
    assert pick_approval(same_second[::-1])["name"] == "second"
    offsets = [job("later", "2026-01-01T10:30:00Z"), job("earlier", "2026-01-01T11:00:00+01:00")]
    assert pick_approval(offsets)["name"] == "later"
    assert pick_approval(offsets[::-1])["name"] == "later"
    # equal to the second: the one that started later (the next approval of a chain), in any order
    chain = [job("hold", "2026-01-01T10:00:00Z", "2026-01-01T09:59:00Z"),
             job("hold-2", "2026-01-01T10:00:00Z", "2026-01-01T10:00:00Z")]
    assert pick_approval(chain)["name"] == "hold-2" and pick_approval(chain[::-1])["name"] == "hold-2"
    # equal in both: the job id decides, not the order of CircleCI's pages
    tie = [job("a", "2026-01-01T10:00:00Z", jid="0f"), job("b", "2026-01-01T10:00:00Z", jid="a0")]
    assert pick_approval(tie)["name"] == "b" and pick_approval(tie[::-1])["name"] == "b"
    # a time that is not one sorts before any time, never a traceback
    odd = [job("known", "2026-01-01T10:00:00Z"), job("garbled", "yesterday")]
    assert pick_approval(odd)["name"] == "known" and pick_approval(odd[::-1])["name"] == "known"


def test_an_approver_without_a_login_is_recorded_by_name(circleci_api, monkeypatch):
    from registry.approver import circleci_approver

    monkeypatch.setenv("CIRCLECI_API_URL", circleci_api.url)
    uid = circleci_api.add_user("dana", name="Dana Scully")
    wid = circleci_api.add_workflow(approver="dana")
    circleci_api.state.users[uid]["login"] = None
    assert circleci_approver(wid, circleci_api.token) == ("Dana Scully", "hold")


def test_in_circleci_without_a_token_an_explicit_actor_is_used_never_the_os_user(monkeypatch):
    from registry.approver import provenance

    monkeypatch.delenv("CIRCLE_TOKEN", raising=False)
    monkeypatch.setenv("CIRCLE_WORKFLOW_ID", "wf-1")
    who = provenance("alice")
    assert (who.actor, who.actor_source) == ("alice", "flag")
    with pytest.raises(ConfigError, match="CIRCLE_WORKFLOW_ID is set .* but CIRCLE_TOKEN is not"):
        provenance(None)


def test_api_base(monkeypatch):
    monkeypatch.delenv("CIRCLECI_API_URL", raising=False)
    assert api_base() == "https://circleci.com/api/v2"
    monkeypatch.setenv("CIRCLECI_API_URL", "http://127.0.0.1:9999/")
    assert api_base() == "http://127.0.0.1:9999/api/v2"
    monkeypatch.setenv("CIRCLECI_API_URL", "https://circleci.example.com/api/v2")
    assert api_base() == "https://circleci.example.com/api/v2"


def test_age():
    now = datetime(2026, 1, 2, tzinfo=timezone.utc)
    assert age(now - timedelta(seconds=5), now) == "5s"
    assert age(now - timedelta(minutes=3, seconds=59), now) == "3m"
    assert age(now - timedelta(hours=5), now) == "5h"
    assert age(now - timedelta(days=40), now) == "40d"
    assert age(now + timedelta(seconds=5), now) == "0s"     # clock skew never gives "-5s"


def test_tables_align_and_truncate():
    assert table(["a", "bb"], [["xxx", None], [1, 2]]).splitlines() == ["a    bb", "---  --", "xxx", "1    2"]
    e = Entry("rollback", "m", "ok", from_version=3, to_version=2, actor="bob", reason="r" * 100, id=7,
              at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
    out = history_table([e])
    assert "2026-01-02 03:04:05" in out and "v3->v2" in out and ("r" * 59 + "…") in out
    assert history_table([]) == "(the ledger is empty)"
    # a filter that matches nothing is not an empty ledger (found by a bad-input sweep)
    assert history_table([], model="nope") == "(no ledger rows for model 'nope')"
    assert history_table([], model="digits", actions=("rollback",)) == \
        "(no ledger rows for model 'digits' and action rollback)"


def test_the_history_table_names_a_promotions_circleci_approver():
    """Found by review (2026-12-06, seventeenth stop): `registry history` showed a promotion's actor
    (the CI job's user) and not the person who approved it in CircleCI (only in ``--json``)."""
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    approved = Entry("promote", "m", "ok", from_version=1, to_version=2, actor="circleci", id=8, at=at,
                     details={"approved_by": "alice"})
    by_hand = Entry("promote", "m", "ok", from_version=2, to_version=3, actor="bob", id=9, at=at,
                    details={"approved_by": "bob"})
    lines = history_table([approved, by_hand]).splitlines()
    assert "circleci (approved by alice)" in lines[2], lines
    assert " bob " in lines[3] and "approved by" not in lines[3], lines


def test_tables_align_by_terminal_cells_with_wide_characters():
    """An actor or reason in Chinese (two cells a character) shifted every later column of its
    row: the padding counted characters, not the cells a terminal draws."""
    out = table(["actor", "outcome"], [["李雷", "refused"], ["bob", "ok"], ["e\u0301", "ok"],
                                       ["สิริ", "ok"]]).splitlines()
    assert out == ["actor  outcome", "-----  -------", "李雷   refused", "bob    ok", "e\u0301      ok",
                   "สิริ     ok"]


def test_version_tags_have_one_style_and_old_names_are_still_read():
    from registry import tags

    names = [v for k, v in vars(tags).items() if k.isupper() and isinstance(v, str)]
    assert names and all(n.islower() and "." not in n for n in names), names
    assert tags.read({"dataset.name": "digits"}, tags.DATASET) == "digits"       # registered before
    assert tags.read({"dataset": "fashion_mnist", "dataset.name": "digits"}, tags.DATASET) == "fashion_mnist"
    assert tags.read({}, tags.DATASET) is None and tags.read({"x": "1"}, tags.APPROVED_BY) is None


def test_description_links_the_circleci_job_from_the_register_row_not_a_tag():
    from registry.description import render
    from registry.ledger import Entry

    reg = Entry(action="register", model="m", outcome="ok", to_version=3,
                details={"ci": {"ci.build_url": "https://circleci.example/job/7"}})
    text = render(version=3, tags={"validation_status": "pending"}, aliases=(), entries=[reg])
    assert "[CircleCI job](https://circleci.example/job/7)" in text
    other = Entry(action="register", model="m", outcome="ok", to_version=2,
                  details={"ci": {"ci.build_url": "https://circleci.example/job/6"}})
    assert "CircleCI job" not in render(version=3, tags={}, aliases=(), entries=[other])


@pytest.mark.parametrize("text", ["0_3", "1_0", "\uff13", "3.0", "0x3", "", "3 4", True])
def test_a_version_is_ascii_digits_not_whatever_int_reads(text):
    """Found by a sweep (2026-12-04): int() read "0_3" as 3 and "３" as 3, so a version nobody
    typed was promoted; "1_0" was refused as "version 10 does not exist"."""
    from registry.versions import parse_version

    with pytest.raises(ConfigError, match="is not a version number"):
        parse_version(text)


def test_a_version_number_as_typed_or_as_an_int():
    from registry.versions import parse_version

    assert parse_version(" 3 ") == 3 and parse_version(3) == 3 and parse_version("03") == 3
    with pytest.raises(ConfigError, match="version numbers start at 1"):
        parse_version("-1")


def test_a_file_tracking_uri_under_mlflow_run_says_to_export_the_server_url(monkeypatch):
    """`mlflow run` without MLFLOW_TRACKING_URI gives its child a sqlite file: the error named a
    URI the user never set."""
    from mlops_common.errors import ConfigError
    from registry.client import check_uri

    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    with pytest.raises(ConfigError) as plain:
        check_uri("sqlite:////tmp/x/mlflow.db")
    assert "mlflow run" not in plain.value.message
    monkeypatch.setenv("MLFLOW_RUN_ID", "abc123")
    with pytest.raises(ConfigError, match="export MLFLOW_TRACKING_URI before `mlflow run`"):
        check_uri("sqlite:////tmp/x/mlflow.db")


def test_a_workflow_whose_approval_is_pending_names_the_job(circleci_api, monkeypatch):
    from mlops_common.errors import RefusedError
    from registry.approver import circleci_approver

    monkeypatch.setenv("CIRCLECI_API_URL", circleci_api.url)
    wid = circleci_api.add_workflow(approver=None, approval_name="hold-for-review")
    with pytest.raises(RefusedError, match=r"has no approved approval job \(approval job hold-for-review is not "
                                           r"approved yet\)"):
        circleci_approver(wid, circleci_api.token)


@contextlib.contextmanager
def _circleci_api_answering(monkeypatch, answer):
    """A CircleCI API at CIRCLECI_API_URL whose every GET gets ``answer()``: (status, JSON text)."""
    from http.server import BaseHTTPRequestHandler

    from tests.helpers import loopback_http

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802 - http.server API
            code, body = answer()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

    with loopback_http(Handler) as url:
        monkeypatch.setenv("CIRCLECI_API_URL", url)
        yield


def test_the_circleci_api_answering_429_is_retried_not_an_error(monkeypatch):
    """CircleCI rate-limits with HTTP 429; the client retries it like a 5xx (found by hand
    mutation, 2026-12-05, fifth stop: nothing checked it)."""
    from registry import approver

    answers = [429, 200]

    def answer():
        code = answers.pop(0) if answers else 500
        return code, json.dumps({"items": [], "next_page_token": None} if code == 200 else {"message": "slow down"})

    with _circleci_api_answering(monkeypatch, answer):
        assert approver._get("/workflow/w/job", "tok") == {"items": [], "next_page_token": None}
        assert answers == []


def test_a_workflow_longer_than_the_pages_read_says_so_in_its_refusal(monkeypatch):
    """Found by hand mutation (2026-12-05, fifth stop): past MAX_PAGES pages the jobs were cut off
    silently, and the refusal said only "no approved approval job"."""
    from registry import approver

    calls = []

    def pages(path, token, params=None):
        calls.append(params)
        return {"items": [{"type": "build", "name": f"job{len(calls)}"}], "next_page_token": f"p{len(calls)}"}

    monkeypatch.setattr(approver, "_get", pages)
    with pytest.raises(approver.RefusedError) as e:
        approver.circleci_approver("wf", "tok")
    assert len(calls) == approver.MAX_PAGES
    assert f"only its first {approver.MAX_PAGES} jobs ({approver.MAX_PAGES} pages) were read" in str(e.value)

    monkeypatch.setattr(approver, "_get", lambda path, token, params=None: {"items": [], "next_page_token": None})
    with pytest.raises(approver.RefusedError) as e:
        approver.circleci_approver("wf", "tok")
    assert "were read" not in str(e.value)


@pytest.mark.parametrize("body", ["[]", '"ok"', "null", "3"])
def test_the_circleci_api_answering_json_that_is_not_an_object_is_one_line(monkeypatch, body):
    """Found by the review of 2026-12-05 (sixth stop): an answer that is JSON but not an object
    (a proxy's or another API's at CIRCLECI_API_URL) was an AttributeError traceback out of
    ``workflow_pipeline`` (``.get("pipeline_id")``), ``circleci_approver`` and the user lookup."""
    from mlops_common.errors import ConnectionFailure
    from registry import approver

    with _circleci_api_answering(monkeypatch, lambda: (200, body)):
        for call, path in ((lambda: approver.workflow_pipeline("wf1", "tok-secret"), "/workflow/wf1"),
                           (lambda: approver.circleci_approver("wf1", "tok-secret"), "/workflow/wf1/job")):
            with pytest.raises(ConnectionFailure) as e:
                call()
            text = str(e.value)
            assert f"the CircleCI API returned JSON that is not an object on {path}" in text
            assert "\n" not in text and "tok-secret" not in text


def test_status_of_a_production_set_outside_mlops_names_no_empty_ledger(tmp_path, monkeypatch):
    """Found by review (2026-12-06, fourteenth stop): ``registry status`` read only the promote,
    rollback and intent rows, so a model registered and gated through mlops whose first production
    was set in the MLflow UI was told "this ledger has no row for the model ... the rows are in
    another ledger", sending the operator to check MLOPS_LEDGER_URL instead of reconciling."""
    from registry import reconciliation, versions
    from registry.ledger import Ledger

    led = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    led.record("register", "m", outcome="ok", to_version=1, actor="ci")
    led.record("gate", "m", outcome="passed", to_version=1, actor="ci")
    monkeypatch.setattr(versions, "production_version", lambda model: 1)      # set in the MLflow UI
    monkeypatch.setattr(versions, "model_created_ms", lambda model: 0)        # created before its rows
    found = reconciliation.check_agreement("m", ledger=led)
    assert not found.agrees and not found.ledger_empty
    assert "moved outside mlops" in found.problem() and "no row for the model" not in found.problem()
    other = reconciliation.check_agreement("other", ledger=led)             # truly no row of that model
    assert other.ledger_empty and "no row for the model" in other.problem()


def test_a_ledger_row_refused_for_bytes_that_are_not_utf8_names_the_model_as_every_command_does():
    """The refusal of a row holding bytes that are not UTF-8 named its model ``mod\\udce9l`` (escaped
    before the output saw it) where every other line shows such a byte as ``\\xe9``."""
    import os

    from mlops_common.errors import RefusedError
    from registry.ledger import _to_row

    model = os.fsdecode(b"mod\xe9l")
    with pytest.raises(RefusedError) as refused:
        _to_row(Entry(action="deploy", model=model, outcome="ok"))
    assert refused.value.message == ("refusing to write a 'deploy' ledger row for 'mod\\xe9l': its model is not "
                                     "UTF-8 text (bytes of another encoding); nothing was recorded")
