"""`mlops registry ...`: gate, promote, rollback, history, status, webhook.

This is the composition root of the gate: it hands ``registry.gate`` an evaluation callable
built on ``mlproject.evaluate.evaluate_version`` so that ``registry`` never imports ``mlproject``.
Heavy imports stay inside the command functions.
"""
from __future__ import annotations

import sys
from dataclasses import replace

from mlops.commands import flags, output
from mlops_common import settings
from mlops_common.errors import ConfigError, GateFailed

_ENV_EPILOG = ("Environment: MLFLOW_TRACKING_URI (MLflow server), MLOPS_MODEL_NAME (default model), "
               "MLOPS_LEDGER_URL (ledger database; default sqlite file in MLOPS_HOME).")


def register(sub) -> None:
    p = sub.add_parser("registry", help="register, gate, promote, roll back, reconcile; history, status, webhooks",
                       description="Everything that reads or writes the MLflow Model Registry: the "
                                   "quality gate, the `candidate` and `production` aliases, the "
                                   "append-only ledger, and the webhook that announces alias moves.",
                       epilog=_ENV_EPILOG)
    rsub = p.add_subparsers(dest="registry_command", metavar="COMMAND")
    rsub.required = True

    g = rsub.add_parser(
        "gate", help="evaluate a version against production and pass or fail it",
        description="Evaluate version N and the version that now holds `production` on the same "
                    "frozen held-out set, now, and apply the rules: accuracy >= --min-accuracy; "
                    "accuracy not lower than production's by more than --max-accuracy-drop "
                    "(default: two standard errors of the paired difference on the same n examples, "
                    "max(0.01, 2*sqrt(((b+c)/n - d^2)/n)), b and c the examples that flipped each "
                    "way, d = (c-b)/n; for evaluations without per-example results "
                    "max(0.01, 2*sqrt(p(1-p)/n))); no class lower than production's by more than "
                    "--max-class-drop (default: paired the same way on that class's examples, "
                    "max(0.02, z*SE) with z the same tail shared among the classes, 2.84 for 10; "
                    "0.10 for evaluations without per-example classes); a "
                    "compatible serving signature. With no production yet only the absolute rule "
                    "applies. Outcome: tag validation_status=passed/failed, gate/report.md, "
                    "gate/report.json and gate/report.html (for people: verdict, rules, per-class "
                    "chart, confusion matrices) logged to the version's run, the markdown printed, "
                    "a ledger row, and "
                    "on pass the `candidate` alias moved to N. A failed gate exits with code 4.",
        epilog="Rule defaults can also be set with MLOPS_GATE_MIN_ACCURACY, "
               "MLOPS_GATE_MAX_ACCURACY_DROP and MLOPS_GATE_MAX_CLASS_DROP. " + _ENV_EPILOG)
    g.add_argument("--version", type=flags.version_number, required=True, metavar="N", help="version to gate")
    g.add_argument("--allow-signature-change", action="store_true",
                   help="accept a serving signature incompatible with production's (recorded in the "
                        "ledger and the version's description); only when every client has been updated")
    g.add_argument("--min-accuracy", type=flags.fraction, metavar="A", help="minimum held-out accuracy (0.80)")
    g.add_argument("--max-accuracy-drop", type=flags.fraction, metavar="D",
                   help="allowed accuracy drop vs production (default derived from the examples that "
                        "flipped between production and the candidate)")
    g.add_argument("--max-class-drop", type=flags.fraction, metavar="D",
                   help="one allowed per-class accuracy drop vs production for every class (default: each "
                        "class's own, paired on its examples; 0.10 for older evaluations)")
    g.add_argument("--report-dir", type=flags.report_dir, metavar="DIR", help="also write report.md, report.json and "
                                                       "report.html here (for CI artifacts)")
    g.add_argument("--junit", metavar="FILE", help="also write the rules as JUnit XML test cases "
                                                   "(for CircleCI's store_test_results)")
    flags.add_model_name(g)
    flags.add_json(g)
    g.set_defaults(func=cmd_gate)

    rg = rsub.add_parser(
        "register", help="register a finished training run whose registration failed",
        description="Register the logged model of a finished `mlops train` / `mlops retrain` run as a new "
                    "version (validation_status=pending), as the training would have: the same tags, "
                    "description and ledger row, the commit and CircleCI pipeline the run was trained at. "
                    "For a training whose registration failed (its error names the run). Refused for a run "
                    "that is not a finished training or already has a version of the model. The files under tfserving/ "
                    "and golden/ are hashed as the artifact store holds them now.",
        epilog=_ENV_EPILOG)
    rg.add_argument("--run-id", type=flags.run_id, required=True, metavar="RUN", help="the training's MLflow run id")
    flags.add_model_name(rg)
    flags.add_json(rg)
    rg.set_defaults(func=cmd_register)

    pr = rsub.add_parser(
        "promote", help="point `production` at a validated version",
        description="Move the `production` alias to a version that passed the gate and record who, "
                    "when, from which version, which pipeline and why (ledger row + version tags). "
                    "Pick the version with --version N, or with --pipeline-id ID: exactly the version "
                    "that CircleCI pipeline registered (tag pipeline_id), never whatever "
                    "`candidate` points at; with both, version N must be the one that pipeline "
                    "registered. A version that never held production is refused until gated again (or "
                    "--force --reason) when its latest gate compared it with another production than "
                    "today's, or did not pass while its tag says passed, or has no gate row in the ledger "
                    "while the model's gates are recorded there (a tag set by hand). A version whose tfserving/ "
                    "or golden/ files are gone from the artifact store is refused (nothing moves). "
                    "Who: in CircleCI (CIRCLE_TOKEN and CIRCLE_WORKFLOW_ID "
                    "set) the user who approved the workflow's approval job, read from CircleCI's "
                    "API v2 (CIRCLECI_API_URL, default https://circleci.com), and that approval promotes "
                    "only the version its workflow (or, rerun, its pipeline) gated; otherwise --actor or the "
                    "OS user.",
        epilog=_ENV_EPILOG)
    pr.add_argument("--version", type=flags.version_number, metavar="N", help="version to promote")
    pr.add_argument("--pipeline-id", type=flags.utf8_text, metavar="ID",
                    help="promote the version registered by this CircleCI pipeline")
    pr.add_argument("--actor", type=flags.actor,
                    help="who is promoting (outside CircleCI; default: the OS user)")
    pr.add_argument("--reason", type=flags.reason, help="why (recorded)")
    pr.add_argument("--force", action="store_true",
                    help="promote even if the version did not pass the gate (needs --reason)")
    flags.add_model_name(pr)
    flags.add_json(pr)
    pr.set_defaults(func=cmd_promote)

    rb = rsub.add_parser(
        "rollback", help="point `production` back at the previous (or a given) version",
        description="Without --to: move `production` back to the version that held it before the "
                    "current one, read from the ledger, skipping versions whose deploy failed. "
                    "It is a promotion like any other (same checks, same records), marked as a "
                    "rollback with its reason. It rolls back the production it read as it started: "
                    "moved meanwhile by another move, it changes nothing (already where it was asked "
                    "to go) or is refused naming that move. Deploy it with `mlops sync deploy`.",
        epilog=_ENV_EPILOG)
    flags.add_rollback(rb)
    flags.add_model_name(rb)
    flags.add_json(rb)
    rb.set_defaults(func=cmd_rollback)

    h = rsub.add_parser("history", help="show the ledger (every register, gate, promotion, deploy...)",
                        description="Print the append-only ledger as a table, oldest first (the "
                                    "newest --limit rows).", epilog=_ENV_EPILOG)
    h.add_argument("--model", type=flags.model_filter, metavar="NAME",
                   help="only rows of this model (default: all models)")
    h.add_argument("--limit", type=flags.row_limit, default=50, metavar="N",
                   help="show the newest N rows (default 50)")
    h.add_argument("--action", action="append", metavar="ACTION",
                   help="only these actions (repeatable): register, gate, promote, rollback, deploy, "
                        "smoke_test, host_rollback, intent, ...")
    flags.add_json(h)
    h.set_defaults(func=cmd_history)

    s = rsub.add_parser("status", help="show every version with aliases, statuses and accuracy",
                        description="One line per version of the model: aliases, validation status, "
                                    "deploy status, held-out accuracy (from its run) and age; then "
                                    "whether the `production` alias sits where the ledger says (a "
                                    "disagreement is shown with what to run).",
                        epilog=_ENV_EPILOG)
    flags.add_model_name(s)
    flags.add_json(s)
    s.set_defaults(func=cmd_status)

    rc = rsub.add_parser(
        "reconcile", help="make the ledger say where `production` is (after a crash or a UI move)",
        description="Under the promotion lock, compare the `production` alias with the ledger and "
                    "record what happened: a promotion that moved the alias but died (or lost "
                    "MLflow's answer) before recording it is confirmed from its intent row; an "
                    "intent that never moved the alias is closed as failed; a move made outside "
                    "mlops (MLflow UI or API) gets a row of its own. Every row's reason says it "
                    "came from reconciliation. When they agree it records no row, but still writes back "
                    "the `approved_by` tag of every version whose tag says someone else than the ledger's "
                    "approver, or was removed (what `registry status` warns of); never moves the alias.",
        epilog=_ENV_EPILOG)
    rc.add_argument("--actor", type=flags.actor,
                    help="who is reconciling (outside CircleCI; default: the OS user)")
    flags.add_model_name(rc)
    flags.add_json(rc)
    rc.set_defaults(func=cmd_reconcile)

    from registry.webhooks import DEFAULT_NAME, DEFAULT_SECRET_ENV, SERVER_SIDE_HELP

    w = rsub.add_parser("webhook", help="MLflow webhook that announces `production` moves",
                        description="Manage the MLflow webhook that lets a move of `production` "
                                    "(also from the MLflow UI) trigger a deploy.")
    wsub = w.add_subparsers(dest="webhook_command", metavar="COMMAND")
    wsub.required = True
    wc = wsub.add_parser(
        "create", help="create or update the webhook for model_version_alias.created",
        description="Create (or update in place, matched by --name) an MLflow webhook for the "
                    "model_version_alias.created event, pointing at the deploy receiver --url and "
                    "signed with the HMAC secret read from the environment variable --secret-env. "
                    "The secret is never printed, logged or written by this command; MLflow stores "
                    "it encrypted. " + SERVER_SIDE_HELP,
        epilog=_ENV_EPILOG)
    wc.add_argument("--url", required=True, type=flags.utf8_text, help="the receiver's URL (http(s)://host:port/path)")
    wc.add_argument("--secret-env", default=DEFAULT_SECRET_ENV, metavar="VAR",
                    help="NAME of the environment variable holding the secret "
                         f"(default {DEFAULT_SECRET_ENV})")
    wc.add_argument("--name", default=DEFAULT_NAME, help=f"webhook name (default {DEFAULT_NAME})")
    flags.add_json(wc)
    wc.set_defaults(func=cmd_webhook_create)




def _evaluator(model: str):
    """``evaluate(version, dataset)`` for the gate, built on mlproject (composition root)."""
    from mlproject.evaluate import evaluate_version
    from registry.gate import NOTHING_GATED

    def evaluate(version: int, dataset: str | None) -> dict:
        return evaluate_version(model, version, dataset=dataset, unchanged=NOTHING_GATED).to_dict()

    return evaluate


def _check_report_dir(path: str | None) -> None:
    """``--report-dir``: refused before the gate records anything when it cannot hold the reports."""
    from mlops_common.paths import check_writable_dir

    if path is not None:
        check_writable_dir(path, f"--report-dir {path}")


def cmd_gate(args) -> int:
    from mlops_common import junit
    from registry.gate import run_gate
    from registry.gate_rules import GateRules
    from registry.provenance import Provenance

    model = settings.model_name(args.model_name)
    rules = GateRules.from_env(min_accuracy=args.min_accuracy, max_accuracy_drop=args.max_accuracy_drop,
                               max_class_drop=args.max_class_drop)
    junit.check_path(args.junit)                 # before the gate records its verdict anywhere
    _check_report_dir(args.report_dir)
    outcome = run_gate(model, args.version, _evaluator(model), rules=rules,
                       allow_signature_change=args.allow_signature_change, report_dir=args.report_dir,
                       provenance=Provenance.from_environment())   # the gate job has no approver yet
    if args.junit:
        junit.write(args.junit, f"quality-gate.{model}.v{outcome.version}",
                    [junit.Case(c["rule"], c["passed"], c["message"]) for c in outcome.report["checks"]])
    if args.json:
        output.emit(outcome.report)
    else:
        print(outcome.markdown)
    if not outcome.passed:
        raise GateFailed(outcome.summary)
    if args.json:
        print(outcome.summary, file=sys.stderr)
    return 0


def cmd_register(args) -> int:
    import contextlib

    from mlops.commands.train import _new_model_name
    from mlproject.train import register_finished_run

    model = _new_model_name(args)      # a name the serving hosts would refuse is refused before registering
    with contextlib.redirect_stdout(sys.stderr):  # libraries print; stdout: the result
        result = register_finished_run(model, args.run_id)
    if args.json:
        output.emit(result)
        return 0
    print(f"registered {model} version {result['version']} from run {result['run_id']}")
    print(f"  run:           {result['run_url']}")
    print(f"  model version: {result['version_url']}")
    print(f"  next:          mlops registry gate --version {result['version']}")
    return 0


def _print_move(args, result, verb: str) -> None:
    if args.json:
        output.emit(result.to_dict())
        return
    prev = f"v{result.from_version}" if result.from_version is not None else "(none)"
    by = result.provenance
    if result.details.get("already_moved") is not None:      # a rollback overtaken by the same move
        from registry.promotion_view import move_said

        if result.to_version is None:       # a failed first deploy removed it: there is nothing older
            print(f"'{result.model}': production already moved off {prev} ({move_said(result)}) after this "
                  f"rollback read it, and no version holds it now (none did before {prev}); nothing changed: "
                  f"promote a working version with `mlops registry promote --version N`")
            return
        print(f"'{result.model}': production already moved {prev} -> v{result.to_version} ({move_said(result)}) "
              f"after this rollback read it; nothing changed")
        return
    if not result.moved:
        print(f"'{result.model}': version {result.to_version} already holds production; "
              f"recorded ({verb} by {by.actor}, ledger #{result.ledger_id})")
        return
    print(f"{verb} '{result.model}': production {prev} -> v{result.to_version} by {by.actor}"
          f"{' (approved in CircleCI)' if by.approved_by else ''}; ledger #{result.ledger_id}. "
          f"Deploy it with `mlops sync deploy`.")


def cmd_promote(args) -> int:
    from registry import approver, promotion

    model = settings.model_name(args.model_name)
    if args.pipeline_id is None and args.version is None:
        raise ConfigError("say which version to promote: --version N or --pipeline-id ID (or both)")
    if args.pipeline_id is not None:
        if not args.pipeline_id.strip():
            raise ConfigError("--pipeline-id is empty (is CIRCLE_PIPELINE_ID set in this job?)")
        version = promotion.version_for_pipeline(model, args.pipeline_id, args.version)
    else:
        version = args.version
    by = approver.provenance(args.actor)
    if args.pipeline_id:        # the pipeline whose version this is, wherever the command runs
        by = replace(by, pipeline_id=args.pipeline_id)
    result = promotion.promote(model, version, provenance=by, reason=args.reason, force=args.force,
                               details={"actor_source": by.actor_source,
                                        **({"approval_job": by.approval_job} if by.approval_job else {}),
                                        **({"selected_by_pipeline": args.pipeline_id}
                                           if args.pipeline_id else {})},
                               check_target=promotion.artifacts_check(model, "mlops registry promote"))
    _print_move(args, result, "promoted")
    return 0


def cmd_rollback(args) -> int:
    from registry import approver, promotion, versions

    model = settings.model_name(args.model_name)
    seen = versions.production_version(model)   # what this command rolls back from (a compare-and-set)
    result = promotion.rollback(model, to=args.to, reason=args.reason, force=args.force,
                                provenance=approver.provenance(args.actor), read_from=seen,
                                check_target=promotion.artifacts_check(model, "mlops registry rollback"))
    _print_move(args, result, "rolled back")
    return 0


def cmd_history(args) -> int:
    from registry.history import class_breach_lines, history_table
    from registry.ledger import ACTIONS, Ledger

    unknown = sorted(set(args.action or ()) - set(ACTIONS))
    if unknown:
        raise ConfigError(f"unknown action {', '.join(unknown)}; choose from {', '.join(ACTIONS)}")
    entries = Ledger().entries(args.model, actions=tuple(args.action) if args.action else None,
                               limit=args.limit)
    if args.json:
        output.emit([e.to_dict() for e in entries])
    else:
        print(history_table(entries, model=args.model, actions=tuple(args.action) if args.action else None))
        for line in class_breach_lines(entries):
            print(line)
    return 0


def cmd_status(args) -> int:
    from registry.history import agreement_line, approval_lines, status_rows, status_table
    from registry.reconciliation import check_agreement, ledger_view

    model = settings.model_name(args.model_name)
    entries = ledger_view(model)            # one read: who let each version in, and where production is
    rows = status_rows(model, entries)
    agreement = check_agreement(model, entries=entries)   # also with no versions: the ledger may name a deleted one
    if args.json:
        output.emit({"model": model, "versions": rows, "ledger": agreement.to_dict()})
    else:
        print(status_table(model, rows))
        if rows or agreement.ledger is not None or agreement.problem():
            print(agreement_line(agreement))
        for line in approval_lines(rows):
            print(line)
    return 0


def cmd_reconcile(args) -> int:
    from mlops_common.text import printable
    from registry import approver, reconciliation

    model = settings.model_name(args.model_name)
    result = reconciliation.reconcile(model, provenance=approver.provenance(args.actor))
    if args.json:
        output.emit(result.to_dict())
        return 0
    where = "(none)" if result.production is None else f"v{result.production}"
    retagged = (f"the approved_by tag of {', '.join(f'v{v}' for v in result.retagged_versions)} did not say "
                f"who the ledger records and is written again" if result.retagged else None)
    if not result.rows:
        print(f"'{model}': production is {where} and the ledger agrees; nothing recorded"
              + (f"; {retagged}" if retagged else ""))
    for r in result.rows:
        print(printable(f"ledger #{r.id}: {r.action} {r.outcome}: {r.reason}"))
    if result.rows and retagged:
        print(retagged)
    return 0


def cmd_webhook_create(args) -> int:
    from registry.webhooks import ensure_webhook

    info = ensure_webhook(args.url, secret_env=args.secret_env, name=args.name)
    if args.json:
        output.emit(info.to_dict())
    else:
        print(f"{'created' if info.created else 'updated'} webhook '{info.name}' ({info.id}): "
              f"{', '.join(info.events)} -> {info.url} [{info.status}], signed with ${args.secret_env}")
        if info.replaced_url:
            print(f"it pointed at {info.replaced_url} before: that receiver gets no more deliveries from it "
                  f"(give each receiver, e.g. each fleet's `sync watch`, a webhook of its own with --name)")
        if info.removed:
            print(f"deleted {len(info.removed)} other webhook(s) of that name: {', '.join(info.removed)}")
    return 0
