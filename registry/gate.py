"""The quality gate: evaluate a new version and production now, decide, record, move ``candidate``.

The evaluation itself is passed in (``evaluate(version, dataset) -> Evaluation dict``; the CLI
builds it on ``mlproject.evaluate.evaluate_version``) so that ``registry`` never imports
``mlproject``. Production is re-evaluated in the same run on the candidate's held-out set,
never trusted from metrics logged long ago. The decision is ``gate_rules.decide``. The CLI's
evaluation checks each logged model it scores against the hashes recorded at registration
(``bundle_hashes.check_model``: refused in one line, nothing recorded); a version registered
before they were is scored unchecked, and the report says so.

Outcome: one tag, ``validation_status`` (the accuracy, baseline and failed rules are in the
``gate`` ledger row and the version's description rebuilt from it), the report logged to the
version's run (``gate/report.md``, ``.json``, ``.html``) and optionally written to a folder, a
``gate`` ledger row, and only on pass the ``candidate`` alias moved to this version.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from mlops_common import filelock, log, strict_json
from mlops_common.errors import ConfigError, DamagedModel, RefusedError, UnfitModel, UserError, reworded

from . import artifacts, bundle_hashes, description, gate_html, gate_report, signature, tags, versions
from .gate_report import summary
from .gate_rules import GateRules, Verdict, choose_baseline, decide
from .ledger import Entry, Ledger
from .promotion_rules import ledger_production
from .provenance import Provenance

Evaluate = Callable[[int, "str | None"], dict]
_log = log.get("registry.gate")
SIGNATURE_ARTIFACT = artifacts.golden_path("signature")
NOTHING_GATED = "Nothing was gated or recorded"
REPORT_LOCK_SECONDS = 30     # another gate renaming its report files into the same --report-dir


@dataclass
class GateOutcome:
    passed: bool
    version: int
    production_version: int | None
    verdict: Verdict
    report: dict
    markdown: str
    summary: str


def _signature_problems(candidate_sig, production_sig, has_production: bool) -> list[str]:
    if candidate_sig is None:
        return [f"new signature: {SIGNATURE_ARTIFACT} is missing from the version's run "
                f"(mlproject's training logs it)"]
    problems = [f"new signature: {p}" for p in signature.format_problems(candidate_sig)]
    if problems or not has_production:
        return problems
    if production_sig is None:
        return [f"production signature: {SIGNATURE_ARTIFACT} is missing from production's run, "
                f"so compatibility cannot be checked"]
    return signature.differences(candidate_sig, production_sig)


def _trained_beside(info: versions.VersionInfo | None) -> str | None:
    """The held-out fingerprint the version's training run recorded (``evaluation/heldout.json``),
    or None when its run has none."""
    if info is None or not info.run_id:
        return None
    doc = versions.run_artifact_json(info.run_id, artifacts.HELDOUT)
    fp = doc.get("heldout_fingerprint") if isinstance(doc, dict) else None
    return fp if isinstance(fp, str) and fp else None


def _check_same_data_set(model: str, version: int, dataset: str, baseline: int, production_dataset: str | None) -> None:
    """The gate compares versions of one data set: production trained on another one (its
    ``dataset`` tag) cannot be measured on the candidate's held-out set. Moving production to
    another data set is a person's decision, so the line says how to make it; nothing is recorded.
    (It was a shape error from loading production, pointing at ``mlops evaluate --dataset``.)"""
    if production_dataset and production_dataset != dataset:
        raise RefusedError(f"production v{baseline} of '{model}' was trained on data set '{production_dataset}' "
                           f"and v{version} on '{dataset}': the gate compares versions of one data set only; "
                           f"to move production to '{dataset}', promote it deliberately: `mlops registry promote "
                           f"--version {version} --force --reason \"...\"`")


def _unchecked_models(model: str, scored: list[int], ledger: Ledger) -> list[str]:
    """The report's notes for the versions scored whose logged model's files have no hashes
    recorded at registration (registered before they were): the evaluation loaded them unchecked
    (``bundle_hashes.check_model`` checks the others before loading them)."""
    return [f"v{x}'s logged model was scored unchecked: no hashes of its files were recorded at its "
            f"registration (registered before they were, or outside mlops), so a change to it in the artifact "
            f"store since cannot be seen"
            for x in scored if bundle_hashes.recorded(model, x, ledger, bundle_hashes.MODEL_FILES) is None]


def _production_unusable(exc: DamagedModel, version: int) -> DamagedModel:
    """Production's logged model cannot be loaded, or its files changed in the artifact store since
    registration: "register a new version" (the advice for a candidate) would not help, as every
    gate is against it; the line says how to move production."""
    return DamagedModel(f"{exc.problem}, and it holds production: no version can be gated against it; "
                        f"move production to a version that loads (`mlops registry rollback --to N "
                        f"--reason ...`), then gate v{version} again", problem=exc.problem)


def _production_unfit(exc: UnfitModel, version: int) -> UnfitModel:
    """Production's logged model loads but takes images of another shape or does not answer one
    probability per class: the advice for a candidate ("register a new version", "`mlops evaluate
    --dataset`") would not help, as every gate is against it; the line says how to move production."""
    return UnfitModel(f"{exc.problem}, and it holds production: no version can be gated against it; move "
                      f"production to a version that can (`mlops registry rollback --to N --reason ...`), then "
                      f"gate v{version} again, or promote v{version} deliberately (`mlops registry promote "
                      f"--version {version} --force --reason \"...\"`)", problem=exc.problem)


def _check_evaluation(doc: dict, version: int) -> dict:
    missing = [k for k in ("accuracy", "loss", "per_class_accuracy", "n", "dataset", "heldout_fingerprint")
               if doc.get(k) in (None, "")]
    if missing:
        raise ConfigError(f"the evaluation of version {version} lacks {', '.join(missing)}; "
                          f"it must be an mlproject Evaluation document")
    return doc


def run_gate(model: str, version, evaluate: Evaluate, *, rules: GateRules | None = None,
             allow_signature_change: bool = False, report_dir: str | Path | None = None,
             provenance: Provenance | None = None, ledger: Ledger | None = None) -> GateOutcome:
    """Gate ``version`` of ``model``; returns the outcome (the caller turns a failure into exit 4).

    ``provenance``: who gates from where, for the ledger row (default: the OS user in this job)."""
    rules = rules or GateRules.from_env()
    ledger = ledger or Ledger()
    info = versions.get_version(model, version)
    v = info.version
    prod = versions.production_version(model)
    held = None if prod is not None else ledger_production(
        ledger.entries(model, actions=("promote", "rollback"), current=True))
    # MLflow drops the alias with a deleted version: does the version the ledger names still exist?
    held_exists = versions.version_exists(model, held) if held else None
    choice = choose_baseline(model, v, prod, held, held_exists)
    baseline = choice.version
    if choice.gated_production:
        _log.info("version %s already holds production; gating it without a baseline", v)

    # checked against the registration's hashes: a signature rewritten in the artifact store since
    # would be compared instead of the one the hosts will check
    cand_sig = versions.bundle_artifact_json(model, info, SIGNATURE_ARTIFACT, unchanged=NOTHING_GATED, ledger=ledger)
    prod_info = versions.get_version(model, baseline) if baseline is not None else None
    try:
        prod_sig = (versions.bundle_artifact_json(model, prod_info, SIGNATURE_ARTIFACT, unchanged=NOTHING_GATED,
                                                  ledger=ledger) if prod_info else None)
    except DamagedModel as exc:
        raise _production_unusable(exc, v) from None
    sig_problems = _signature_problems(cand_sig, prod_sig, baseline is not None)

    _log.info("evaluating version %s of '%s' on the frozen held-out set ...", v, model)
    cand_eval = _check_evaluation(evaluate(v, None), v)
    prod_eval = None
    if baseline is not None:
        _check_same_data_set(model, v, cand_eval["dataset"], baseline, tags.read(prod_info.tags, tags.DATASET))
        _log.info("re-evaluating production (version %s) on the same held-out set ...", baseline)
        try:
            prod_eval = _check_evaluation(evaluate(baseline, cand_eval.get("dataset")), baseline)
        except DamagedModel as exc:
            raise _production_unusable(exc, v) from None
        except UnfitModel as exc:
            raise _production_unfit(exc, v) from None

    trained_beside = {"candidate": _trained_beside(info),
                      "production": _trained_beside(prod_info) if prod_eval is not None else None}
    verdict = decide(cand_eval, prod_eval, rules, baseline_version=baseline,
                     signature_problems=sig_problems, allow_signature_change=allow_signature_change,
                     gated_production=choice.gated_production, trained_beside=trained_beside)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    report = gate_report.build(model=model, version=v, verdict=verdict, rules=rules,
                               candidate=cand_eval, production=prod_eval,
                               signature_differences=sig_problems,
                               allow_signature_change=allow_signature_change, evaluated_at=now,
                               notes=_unchecked_models(model, [v] + ([baseline] if prod_eval is not None else []),
                                                       ledger))
    md = gate_report.markdown(report)
    outcome = GateOutcome(verdict.passed, v, baseline, verdict, report, md, summary(verdict, v))
    _record(model, info, outcome, allow_signature_change, report_dir,
            provenance or Provenance.from_environment(), ledger, rules.changed())
    return outcome


def write_report_files(out: Path, md: str, report: dict, page: str) -> None:
    """report.md, report.json (strict JSON: other programs read it) and report.html in ``out``,
    replaced together once all three are written (a full disk midway left this run's report.md
    beside an earlier run's report.json, and a cut-off temporary file). Each run writes its own
    temporary files (two gates writing one folder at once shared ``.report.*.tmp``: one renamed the
    other's) and renames the three under a lock on the folder, so the set is one run's."""
    files = (("report.md", md), ("report.json", strict_json.dumps(report, indent=2) + "\n"), ("report.html", page))
    tmps: list[Path] = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, content in files:
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out)
            os.close(fd)
            tmps.append(Path(tmp))
            tmps[-1].write_text(content)
        folder = os.open(out, os.O_RDONLY)
        try:
            with filelock.held(folder, timeout=REPORT_LOCK_SECONDS, poll=0.05, timed_out=lambda: ConfigError(
                    f"--report-dir {out}: another gate kept it locked over {REPORT_LOCK_SECONDS} s; give each "
                    f"gate run its own folder")):
                for tmp, (name, _) in zip(tmps, files):
                    tmp.replace(out / name)
        finally:
            os.close(folder)
    except OSError as exc:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
        raise ConfigError(f"--report-dir {out}: cannot write the gate report ({exc.strerror or exc}); name a "
                          f"folder you can write") from None


def _record(model, info: versions.VersionInfo, outcome: GateOutcome, allow_signature_change: bool,
            report_dir, by: Provenance, ledger: Ledger, rules_changed: dict[str, float]) -> None:
    v, verdict, report, md = info.version, outcome.verdict, outcome.report, outcome.markdown
    page = gate_html.html(report)   # for people: CircleCI artifact and MLflow's artifact viewer
    status = "passed" if verdict.passed else "failed"
    if not verdict.passed:
        # tagged before any report: a failing re-run whose tag write failed after its report was
        # logged left a FAILED report beside the earlier `passed` tag and row, and a promotion
        # accepted the version (review, eighteenth stop). Now that write failing records nothing.
        try:
            versions.set_tags(model, v, {tags.VALIDATION_STATUS: status})
        except UserError as exc:
            raise reworded(exc, f"the gate's verdict on v{v} (failed) was not recorded, and v{v} keeps its earlier "
                                f"one ({info.validation_status}): {exc.message}; gate it again before promoting "
                                f"it") from None
    if report_dir:
        write_report_files(Path(report_dir), md, report, page)
    if info.run_id:
        versions.log_run_text(info.run_id, md, f"{artifacts.GATE_REPORT}.md")
        versions.log_run_text(info.run_id, strict_json.dumps(report, indent=2), f"{artifacts.GATE_REPORT}.json")
        versions.log_run_text(info.run_id, page, f"{artifacts.GATE_REPORT}.html")
    # one tag for the versions list; accuracy, baseline, failed rules, when: the ledger row below
    # and the description rebuilt from it. A promotion reads both (the tag: passed; the row: against
    # which production), so whichever write fails must not leave a `passed` the row does not back:
    # a failure is tagged before its reports and row (above), a pass only after its row (a tag
    # `passed` without a row was promoted on a verdict against an earlier production).
    row = Entry(
        action="gate", model=model, outcome=status, from_version=verdict.baseline_version,
        to_version=v, reason=outcome.summary, **by.row(),
        details={"accuracy": report["metrics"]["candidate"]["accuracy"],
                 "production_accuracy": (report["metrics"]["production"] or {}).get("accuracy"),
                 "tolerance": verdict.tolerance,
                 # gated while it held production: no baseline (the version's page says so)
                 "gated_production": bool(verdict.gated_production),
                 "discordant": report["discordant"],
                 "failed_rules": [c.rule for c in verdict.failed],
                 "signature_change_allowed": allow_signature_change,
                 # flags or MLOPS_GATE_* set away from the defaults: marked as the signature change is
                 "rules_changed": rules_changed,
                 "signature_differences": report["signature_differences"],
                 # the per-class rule's figures: why a per-class verdict was what it was
                 "per_class": gate_report.ledger_classes(report, verdict.class_allowed)})
    ledger.append(row)
    if verdict.passed:
        versions.set_tags(model, v, {tags.VALIDATION_STATUS: status})
    # read now: another gate may have moved 'candidate' to its version during this evaluation
    held = versions.registered_model_aliases(model).get(versions.CANDIDATE)
    if verdict.passed and verdict.gated_production:     # not a candidate: the one awaiting approval keeps it
        _log.info("version %s holds production: alias '%s' left where it is", v, versions.CANDIDATE)
    elif verdict.passed:
        versions.set_alias(model, versions.CANDIDATE, v)
        _log.info("alias '%s' of '%s' now points at version %s", versions.CANDIDATE, model, v)
    elif held == v:
        versions.delete_alias(model, versions.CANDIDATE)
        _log.info("removed alias '%s' from version %s: it no longer passes", versions.CANDIDATE, v)
    # after the alias moved; the version it moved from shows it no longer
    moved_from = held if verdict.passed and not verdict.gated_production and held != v else None
    description.refresh_quietly(model, v, moved_from)
