"""Who is promoting: the CircleCI approver of this workflow, else ``--actor``, else the OS user.

In CircleCI (``CIRCLE_TOKEN`` and ``CIRCLE_WORKFLOW_ID`` set) the approval job of the workflow
says who approved: API v2 ``GET /api/v2/workflow/{id}/job`` -> the item with
``type: approval`` -> ``approved_by`` (a user id) -> ``GET /api/v2/user/{id}`` -> ``login``;
``GET /api/v2/workflow/{id}`` -> ``pipeline_id``: the pipeline the approval belongs to (what
ties it to the version that pipeline gated: ``move_checks.check_approval_tie``).
``GET /api/v2/pipeline/{id}/config`` -> ``compiled``: that pipeline's configuration as CircleCI
compiled it, pipeline parameters substituted: the rollback it was triggered for (its
``rollback-to``, in the ``ROLLBACK_TO`` of the rollback job: ``rollback_asked``), which ties a
rollback workflow's approval to that version (``move_checks.check_rollback_tie``).
The token travels only in the ``Circle-Token`` header: it is never logged, stored or put in a
message. Base URL: ``CIRCLECI_API_URL`` (default https://circleci.com).
"""
from __future__ import annotations

from datetime import datetime, timezone

import requests
import yaml

from mlops_common import lineage, settings
from mlops_common.errors import ConfigError, ConnectionFailure, NotFoundError, RefusedError
from mlops_common.retry import retry

from .provenance import Provenance

DEFAULT_API_URL = "https://circleci.com"
MAX_PAGES = 20


def api_base() -> str:
    base = (settings.env("CIRCLECI_API_URL") or DEFAULT_API_URL).rstrip("/")
    if settings.query_secrets(base):    # ?circle-token= (API v1's way): every message would echo it
        raise ConfigError("CIRCLECI_API_URL must not carry a credential in its query string (it would be printed "
                          "in logs); put the token in CIRCLE_TOKEN")
    return base if base.endswith("/api/v2") else f"{base}/api/v2"


def shown_base() -> str:
    """``api_base()`` for messages: a password in ``CIRCLECI_API_URL`` (a proxy's) is masked."""
    return settings.mask_url_password(api_base())


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return True
    return isinstance(exc, _ServerError)


class _ServerError(Exception):
    pass


def _get(path: str, token: str, params: dict | None = None) -> dict:
    url = f"{api_base()}{path}"

    def call():
        # never redirected: requests drops only ``Authorization`` on a redirect to another host,
        # so the Circle-Token header went along to wherever a Location pointed
        r = requests.get(url, headers={"Circle-Token": token, "Accept": "application/json"},
                         params=params, timeout=15, allow_redirects=False)
        if r.status_code >= 500 or r.status_code == 429:
            raise _ServerError(f"HTTP {r.status_code}")
        return r

    try:
        r = retry(call, is_transient=_transient, attempts=3, first_delay=0.5)
    except (requests.ConnectionError, requests.Timeout):
        raise ConnectionFailure(f"cannot reach the CircleCI API at {shown_base()}; check the network "
                                f"or CIRCLECI_API_URL") from None
    except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema):
        raise ConfigError(f"CIRCLECI_API_URL is not a usable URL ({shown_base()!r}); e.g. "
                          f"https://circleci.com/api/v2") from None
    except _ServerError as exc:
        raise ConnectionFailure(f"the CircleCI API at {shown_base()} kept failing ({exc}); "
                                f"retry the promote-and-deploy job") from None
    except requests.RequestException as exc:
        # Only the type: the message of e.g. InvalidHeader quotes the header value (the token).
        raise ConnectionFailure(f"the request to the CircleCI API at {shown_base()} failed "
                                f"({type(exc).__name__}); check CIRCLE_TOKEN and CIRCLECI_API_URL") from None
    if r.is_redirect:
        raise ConfigError(f"the CircleCI API at {shown_base()} answered HTTP {r.status_code} (a redirect) on {path}; "
                          f"CIRCLE_TOKEN is sent nowhere else: set CIRCLECI_API_URL to the API's own address "
                          f"(https://circleci.com, or your CircleCI server's)")
    if r.status_code in (401, 403):
        raise ConfigError(f"the CircleCI API rejected CIRCLE_TOKEN (HTTP {r.status_code}) on {path}; "
                          f"set CIRCLE_TOKEN to a valid personal API token in the CircleCI context")
    if r.status_code == 404:
        raise NotFoundError(f"the CircleCI API has no {path} (HTTP 404); check CIRCLE_WORKFLOW_ID "
                            f"and that CIRCLE_TOKEN can see this project")
    if r.status_code != 200:
        raise ConnectionFailure(f"the CircleCI API answered HTTP {r.status_code} on {path}")
    try:
        doc = r.json()
    except ValueError:
        raise ConnectionFailure(f"the CircleCI API returned non-JSON on {path}; check "
                                f"CIRCLECI_API_URL") from None
    if not isinstance(doc, dict):   # every v2 answer read here is an object; .get on anything else was a traceback
        raise ConnectionFailure(f"the CircleCI API returned JSON that is not an object on {path}; check "
                                f"CIRCLECI_API_URL")
    return doc


_NO_TIME = datetime.min.replace(tzinfo=timezone.utc)


def _instant(value: object) -> datetime | None:
    """A CircleCI RFC 3339 time (``…:05Z``, ``…:05.123Z``, ``…+01:00``) as an aware datetime (to the
    microsecond, as written); None when absent or not a time. Compared as text, ``…:05Z`` sorted
    after ``…:05.5Z`` and an offset by its digits."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        t = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def _approval_order(job: dict) -> tuple:
    """When an approval job stopped (else started), then when it started: equal to the second,
    the later-started job is the later approval of a chain (``hold`` -> ``hold-2``); then its id,
    so a full tie does not depend on the order of CircleCI's pages."""
    started = _instant(job.get("started_at"))
    stopped = _instant(job.get("stopped_at")) or started
    return (stopped or _NO_TIME, started or _NO_TIME, str(job.get("id") or ""))


def pick_approval(jobs: list[dict]) -> dict | None:
    """The approved approval job of a workflow (the last one to stop if several), else None."""
    approved = [j for j in jobs if j.get("type") == "approval" and j.get("approved_by")]
    if not approved:
        return None
    return max(approved, key=_approval_order)


def circleci_approver(workflow_id: str, token: str) -> tuple[str, str]:
    """``(login, approval job name)`` of whoever approved ``workflow_id``'s approval job."""
    jobs: list[dict] = []
    token_page = None
    for _ in range(MAX_PAGES):
        doc = _get(f"/workflow/{workflow_id}/job", token,
                   {"page-token": token_page} if token_page else None)
        jobs.extend(doc.get("items") or [])
        token_page = doc.get("next_page_token")
        if not token_page:
            break
    job = pick_approval(jobs)
    if job is None:
        pending = [j.get("name") for j in jobs if j.get("type") == "approval"]
        raise RefusedError(
            f"CircleCI workflow {workflow_id} has no approved approval job"
            + (f" (approval job {', '.join(map(str, pending))} is not approved yet)" if pending
               else " (add a `type: approval` job before the promote-and-deploy job)")
            + (f"; only its first {len(jobs)} jobs ({MAX_PAGES} pages) were read" if token_page else ""))
    user = _get(f"/user/{job['approved_by']}", token)
    login = user.get("login") or user.get("name")
    if not login:
        raise ConnectionFailure(f"the CircleCI API returned no login for user {job['approved_by']}")
    return str(login), str(job.get("name") or "approval")


def workflow_pipeline(workflow_id: str, token: str) -> str:
    """The id of the pipeline ``workflow_id`` belongs to, as CircleCI says (not the environment)."""
    pipeline = _get(f"/workflow/{workflow_id}", token).get("pipeline_id")
    if not pipeline:
        raise ConnectionFailure(f"the CircleCI API returned no pipeline_id for workflow {workflow_id}; "
                                f"check CIRCLECI_API_URL")
    return str(pipeline)


# The variable .circleci/config.yml's rollback-and-deploy job sets from << pipeline.parameters.rollback-to >>
# and hands to `mlops registry rollback --to`; in a compiled config the parameter's value stands there.
ROLLBACK_TO_ENV = "ROLLBACK_TO"


def rollback_to_in_config(compiled: str) -> list[str] | None:
    """Every ``ROLLBACK_TO`` a compiled CircleCI config sets (a job's ``environment`` or a ``run``
    step's), as text: ``""`` for an empty one (a YAML null, ``''``, or ``<nil>`` as CircleCI hands an
    empty value to a job). None when the text is not a YAML mapping."""
    try:
        doc = yaml.safe_load(compiled)
    except yaml.YAMLError:
        return None
    if not isinstance(doc, dict):
        return None
    found: list[str] = []

    def take(env) -> None:
        if isinstance(env, dict) and ROLLBACK_TO_ENV in env:
            v = env[ROLLBACK_TO_ENV]
            text = "" if v is None else str(v).strip()
            found.append("" if text == "<nil>" else text)

    jobs = doc.get("jobs")
    for job in (jobs.values() if isinstance(jobs, dict) else ()):
        if not isinstance(job, dict):
            continue
        take(job.get("environment"))
        for step in job.get("steps") or ():
            if isinstance(step, dict) and isinstance(step.get("run"), dict):
                take(step["run"].get("environment"))
    return found


def rollback_asked(pipeline_id: str | None) -> list[str]:
    """The ``rollback-to`` values CircleCI's compiled config of ``pipeline_id`` carries
    (``rollback_to_in_config``): what the rollback pipeline whose approval is used was triggered
    for, read from CircleCI (``GET /pipeline/{id}/config``), not from this job's environment."""
    token = settings.token_env("CIRCLE_TOKEN")
    if not token or not pipeline_id:
        raise ConfigError("a CircleCI approval of a rollback needs CIRCLE_TOKEN and the approval's pipeline "
                          "to read which version that pipeline was triggered for")
    compiled = _get(f"/pipeline/{pipeline_id}/config", token).get("compiled")
    if not isinstance(compiled, str) or not compiled.strip():
        # CircleCI leaves it empty when the pipeline's configuration did not compile (then no
        # workflow ran, and no approval was given in it)
        raise RefusedError(f"CircleCI has no compiled configuration for pipeline {pipeline_id}, so which "
                           f"rollback its approval was for cannot be read; roll back from a rollback "
                           f"workflow, or without CircleCI with --actor")
    found = rollback_to_in_config(compiled)
    if found is None:
        raise ConnectionFailure(f"the CircleCI API returned a compiled configuration that is not YAML for "
                                f"pipeline {pipeline_id}; check CIRCLECI_API_URL")
    return found


def pipeline_created(pipeline_id: str) -> datetime:
    """When CircleCI created ``pipeline_id`` (``GET /pipeline/{id}`` -> ``created_at``): when a
    rollback pipeline was triggered, i.e. which production its rollback was asked against."""
    token = settings.token_env("CIRCLE_TOKEN")
    if not token:
        raise ConfigError("a CircleCI approval of a rollback needs CIRCLE_TOKEN to read when its pipeline "
                          "was triggered")
    created = _instant(_get(f"/pipeline/{pipeline_id}", token).get("created_at"))
    if created is None:
        raise ConnectionFailure(f"the CircleCI API returned no created_at for pipeline {pipeline_id}; "
                                f"check CIRCLECI_API_URL")
    return created


def provenance(explicit: str | None = None) -> Provenance:
    """Who and where of a command that moves ``production``, built once at its start and carried
    into every ledger row and tag it writes. Who: the CircleCI approver when running in CircleCI
    with a token, else ``explicit`` (``--actor``), else the OS user."""
    token, workflow = settings.token_env("CIRCLE_TOKEN"), lineage.workflow_id()
    if token and workflow:
        login, job = circleci_approver(workflow, token)
        return Provenance.from_environment(login, approved_by=login, actor_source="circleci", approval_job=job,
                                           approval_pipeline_id=workflow_pipeline(workflow, token))
    if workflow and not explicit:     # a CircleCI job whose context lacks the token: never the OS user
        raise ConfigError(f"CIRCLE_WORKFLOW_ID is set (CircleCI workflow {workflow}) but CIRCLE_TOKEN is not, so "
                          f"who approved cannot be read: add CIRCLE_TOKEN to the job's context (mlops-deploy), or "
                          f"name who acts with --actor")
    if explicit:
        return Provenance.from_environment(explicit, actor_source="flag")
    return Provenance.from_environment(lineage.os_user(), actor_source="os")
