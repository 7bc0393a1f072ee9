"""Who acted and from where, as one value: built once at the edge, written into every ledger row
and version tag that an action leaves.

CLI handlers build it with ``registry.approver.provenance`` (the CircleCI approver, ``--actor``
or the OS user); library callers that only know who get the rest from the environment
(``Provenance.from_environment``, the CircleCI ids of this job and the git commit).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from mlops_common import lineage


@dataclass(frozen=True)
class Provenance:
    """Who (actor, CircleCI approver) and where (CircleCI pipeline, workflow, other ids, commit)."""

    actor: str
    approved_by: str | None = None      # the CircleCI approver's login, when there was one
    actor_source: str | None = None     # "circleci" | "flag" | "os": how the CLI found the actor
    approval_job: str | None = None     # the CircleCI approval job that said yes
    # the pipeline of the workflow whose approval job said yes (``workflow_id``), from CircleCI's
    # API: a rerun from failed is a new workflow of the same pipeline
    approval_pipeline_id: str | None = None
    pipeline_id: str | None = None
    workflow_id: str | None = None
    git_commit: str | None = None
    ci: dict[str, str] = field(default_factory=dict, hash=False)   # every ci.* id of this job

    @classmethod
    def from_environment(cls, actor: str | None = None, **who) -> Provenance:
        """``actor`` (default: the OS user) in this process's CircleCI job and git checkout."""
        return cls(actor=actor or lineage.os_user(), pipeline_id=lineage.pipeline_id(),
                   workflow_id=lineage.workflow_id(), git_commit=lineage.git_commit(),
                   ci=lineage.ci_tags(), **who)

    @property
    def circleci_approval(self) -> bool:
        """Whether the approver was read from a CircleCI workflow's approval job (``workflow_id``)."""
        return self.actor_source == "circleci" and bool(self.workflow_id)

    def row(self) -> dict[str, str | None]:
        """The ledger columns it fills: ``Entry(..., **provenance.row())``."""
        return {"actor": self.actor, "pipeline_id": self.pipeline_id, "workflow_id": self.workflow_id}


def given(provenance: Provenance | None, actor: str | None = None, **who) -> Provenance:
    """``provenance``, else one from the environment for ``actor``: for library callers (tests,
    scripts, ``mlops sync``) that name only who is acting."""
    return provenance if provenance is not None else Provenance.from_environment(actor, **who)
