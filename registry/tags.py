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
DATASET = "dataset.name"                  # e.g. digits (evaluate reads it to pick the held-out set)
GIT_COMMIT = "git_commit"                 # commit that trained it (lineage)
PIPELINE_ID = "ci.pipeline_id"            # CircleCI pipeline that registered it (promote --pipeline-id)

# read by code, not meant for people
DATASET_FINGERPRINT = "dataset.fingerprint"
RETRAINED_FROM = "retrained_from"
INFRA_VALIDATION = "infra_validation"     # sync infra-validate: passed / failed
DEPLOY_REASON = "deploy.reason"           # why the last deploy failed (sync)
DEPLOY_CANARY = "deploy.canary"           # canary verdict (sync)

VALIDATION_VALUES = ("pending", "passed", "failed")
