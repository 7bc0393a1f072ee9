"""Every registered-model-version tag name, in one place.

The MLflow versions list shows tags in a narrow column, so a version carries only what that
list must show and what code reads; the story (gate numbers, baseline, reasons, production
history, per-host deploys, links) is the version's Markdown description (``registry.description``)
and the ledger. docs/architecture.md ("Registered model version tags") says who writes and who
reads each one.
"""
from __future__ import annotations

# shown in the versions list
VALIDATION_STATUS = "validation_status"   # pending / passed / failed (gate; promotion checks it)
DEPLOY_STATUS = "deploy_status"           # deployed / failed / rolled_back (sync; rollback skips failed)
APPROVED_BY = "approved_by"               # who let it into production (CircleCI approver, else the promoter)
DATASET = "dataset"                       # e.g. digits (evaluate reads it to pick the held-out set)
GIT_COMMIT = "git_commit"                 # commit that trained it (lineage)
PIPELINE_ID = "pipeline_id"               # CircleCI pipeline that registered it (promote --pipeline-id)

# read by code, not meant for people
DATASET_FINGERPRINT = "dataset_fingerprint"
RETRAINED_FROM = "retrained_from"
INFRA_VALIDATION = "infra_validation"     # sync infra-validate: passed / failed
DEPLOY_REASON = "deploy_reason"           # why the last deploy failed (sync)
DEPLOY_CANARY = "deploy_canary"           # canary verdict (sync)
REGISTER_CALL = "register_call"           # which registration created it (tells its retried copies from
                                          # another command's version of the same run)

# Names of versions registered before the tags took one style (read, never written; a write under
# the current name removes the old one: ``retired``).
LEGACY = {DATASET: "dataset.name", PIPELINE_ID: "ci.pipeline_id", DATASET_FINGERPRINT: "dataset.fingerprint",
          DEPLOY_REASON: "deploy.reason", DEPLOY_CANARY: "deploy.canary"}


def read(version_tags: dict[str, str], name: str) -> str | None:
    """A version tag by its current name, else by its name before the rename."""
    value = version_tags.get(name)
    return value if value is not None else version_tags.get(LEGACY.get(name, ""))


def retired(version_tags: dict[str, str], written) -> list[str]:
    """The older names of the tags in ``written`` that the version still carries: left beside a
    value written under the current name, the versions list would show both (an old failure's
    reason next to ``deploy_reason=none``)."""
    return [LEGACY[name] for name in written if name in LEGACY and LEGACY[name] in version_tags]
