"""The append-only ledger: who did what to which model version, when, from where, and why.

MLflow keeps no history of aliases, so "who moved ``production``, from which version, in which
pipeline, and why" lives here, as does every register, gate result, deploy and smoke test.
Rows are only ever inserted: there is no update or delete path in this module, and the
database itself rejects UPDATE/DELETE (triggers created by the first migration).

The schema is created and versioned with Alembic (``registry/migrations``) on first use, with
its own version table, so the ledger may share a PostgreSQL database with MLflow. SQLite
(default: its own file next to the local MLflow database, never MLflow's file itself) and
PostgreSQL are supported.

``Ledger.serialized(model)`` is the promotion lock, held across commits (a lock file beside a
SQLite database; a session-level advisory lock per model on PostgreSQL, ``pg_try_advisory_lock`` polled), around "read
current production -> commit an intent row -> move alias -> append the outcome row", so racing
promotions never lose a row and the alias always ends where the ledger says. Both kinds of lock
die with the process that holds them, so a SIGKILLed promotion blocks no one.

This module is the rows and the ``Ledger`` API; the database under them (engines, locks, write
transactions, migrations) is ``ledger_db``.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from typing import Callable, Iterator

import sqlalchemy as sa

from mlops_common import log, settings, strict_json
from mlops_common.errors import RefusedError, UserError

from . import ledger_db

ACTIONS = ("register", "gate", "promote", "rollback", "deploy", "smoke_test", "host_rollback", "intent",
           "lock_takeover", "canary")
OUTCOMES = ("ok", "passed", "failed", "refused", "rolled_back", "pending")
CREATED_MS = "created_ms"    # a register row's detail: when MLflow created the version (ms, the server's clock)
# a detail of every row written under the promotion lock (moves, intents, reconciliation): when MLflow
# created the registered model the row is about (ms, the server's clock), so a model deleted and
# created again tells its rows from the deleted one's without comparing the writers' clocks
MODEL_CREATED_MS = "model_created_ms"
# a detail of every row written under the promotion lock: when it was written on the MLflow server's
# clock (ms: its last answer's Date, whole seconds, plus the time since), what a move's time is
# compared with elsewhere (CircleCI's ``created_at``: ``move_checks.production_at``), not the writer's
SERVER_MS = "server_ms"

_metadata = sa.MetaData()
entries_table = sa.Table(
    "ledger_entries", _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("model", sa.String(256), nullable=False),
    sa.Column("from_version", sa.Integer),
    sa.Column("to_version", sa.Integer),
    sa.Column("actor", sa.String(256)),
    sa.Column("pipeline_id", sa.String(128)),
    sa.Column("workflow_id", sa.String(128)),
    sa.Column("host", sa.String(256)),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("details", sa.Text),
)


@dataclass(frozen=True)
class Entry:
    """One ledger row. ``id`` and ``at`` are filled in when it is appended."""

    action: str
    model: str
    outcome: str
    from_version: int | None = None
    to_version: int | None = None
    actor: str | None = None
    pipeline_id: str | None = None
    workflow_id: str | None = None
    host: str | None = None
    reason: str | None = None
    details: dict = field(default_factory=dict)
    id: int | None = None
    at: datetime | None = None

    def __post_init__(self):
        # a row read back (it has an id) is shown as written: a newer mlops sharing the ledger
        # adds actions and outcomes (``canary`` and ``lock_takeover`` came so), and an older
        # one's every read of such a row was a traceback (`registry history`)
        if self.id is not None:
            return
        if self.action not in ACTIONS:
            raise ValueError(f"unknown ledger action {self.action!r}; expected one of {ACTIONS}")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown ledger outcome {self.outcome!r}; expected one of {OUTCOMES}")
        if not self.model:
            raise ValueError("a ledger entry needs a model name")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["at"] = self.at.isoformat() if self.at else None
        return d


def _to_row(entry: Entry) -> dict:
    values = {f.name: getattr(entry, f.name) for f in fields(entry) if f.name != "id"}   # no deep copy
    row = {k: v for k, v in values.items() if k != "details"}
    # strict: a NaN / infinity as null, so PostgreSQL's ``details::json`` and jq read every row
    row["details"] = strict_json.dumps(entry.details, sort_keys=True, default=str) if entry.details else None
    if _holds_secret(list(values.values()), settings.secret_values()):
        raise RefusedError(f"refusing to write a '{entry.action}' ledger row for '{entry.model}': it "
                           f"contains the value of a secret environment variable")
    for name, value in row.items():
        try:
            value.encode("utf-8") if isinstance(value, str) else None
        except UnicodeEncodeError:  # not UTF-8 bytes (an environment variable, argv): the driver's traceback
            raise RefusedError(f"refusing to write a '{entry.action}' ledger row for "
                               f"'{log.printable(entry.model)}': its {name} is "
                               f"not UTF-8 text (bytes of another encoding); nothing was recorded") from None
    return row


def _holds_secret(value, secrets: list[str], depth: int = 0) -> bool:
    """Whether any raw string in ``value`` (dict keys and values, lists, nested) contains a secret.

    Raw, not JSON-escaped: a secret with quotes, backslashes or non-ASCII characters is escaped
    differently in the stored text, and would slip past a check of that text.
    """
    if not secrets or value is None:
        return False
    if depth > 50:                      # bounded: deeper levels are checked as their JSON text
        return _holds_secret(json.dumps(value, default=str), secrets)
    if isinstance(value, dict):
        return any(_holds_secret(k, secrets, depth + 1) or _holds_secret(v, secrets, depth + 1)
                   for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(_holds_secret(v, secrets, depth + 1) for v in value)
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return any(secret in text for secret in secrets)


def _from_row(row) -> Entry:
    m = dict(row._mapping)
    at = m["at"]
    if at is not None and at.tzinfo is None:  # SQLite returns naive datetimes; we store UTC
        at = at.replace(tzinfo=timezone.utc)
    elif at is not None:    # PostgreSQL: in the session's time zone (the server's); shown labelled UTC
        at = at.astimezone(timezone.utc)
    m["at"] = at
    m["details"] = json.loads(m["details"]) if m["details"] else {}
    return Entry(**m)


class Ledger:
    """Append and read ledger rows. ``Ledger()`` uses ``MLOPS_LEDGER_URL`` or the local SQLite file."""

    def __init__(self, url: str | None = None):
        self.url = url or settings.ledger_url()
        self._engine = ledger_db.engine_for(self.url)

    # -- writing ---------------------------------------------------------------------------
    def append(self, entry: Entry) -> Entry:
        """Insert one row in its own transaction; returns it with ``id`` and ``at`` set."""
        return self.append_all([entry])[0]

    def append_all(self, entries: list[Entry]) -> list[Entry]:
        """Insert rows of one model in ONE transaction, in order: all of them or none. A fleet's
        wave records its hosts this way: one commit (one fsync on SQLite, one lock and commit
        round trip on PostgreSQL) per wave instead of one per host."""
        entries = list(entries)
        if not entries:
            return []
        models = {e.model for e in entries}
        if len(models) != 1:
            raise ValueError(f"append_all writes the rows of one model, got {sorted(models)}")
        with ledger_db.db_errors(self.url, "cannot write to the ledger database"):
            with ledger_db.write_transaction(self._engine, entries[0].model) as conn:
                return [_insert(conn, e) for e in entries]

    def record(self, action: str, model: str, *, outcome: str, **fields) -> Entry:
        """Shorthand for ``append(Entry(action, model, outcome, **fields))``."""
        return self.append(Entry(action=action, model=model, outcome=outcome, **fields))

    @contextlib.contextmanager
    def serialized(self, model: str) -> Iterator["LockedLedger"]:
        """Hold ``model``'s promotion lock for the block; rows appended inside commit at its end,
        or earlier at ``LockedLedger.commit()`` (the lock stays held).

        If the block raises, nothing it appended since the last commit is kept.
        """
        what = "the promotion transaction failed (or waited too long for the lock) on"
        with ledger_db.db_errors(self.url, what):
            with ledger_db.promotion_session(self._engine, self.url, model) as conn:
                try:
                    yield LockedLedger(conn, model)
                except BaseException:
                    conn.rollback()
                    raise
                conn.commit()

    # -- reading ---------------------------------------------------------------------------
    def entries(self, model: str | None = None, *, actions: tuple[str, ...] | None = None,
                limit: int | None = None, current: bool = False, version: int | None = None,
                to_version: int | None = None, since: MoveCut | None = None,
                created_ms: int | None = None) -> list[Entry]:
        """Rows in the order they were appended (oldest first); ``limit`` keeps the newest N;
        ``current``: only the rows of the model as it exists now (``_current_start``), for
        decisions, told by ``created_ms``: when MLflow created the registered model now under
        this name (ms, the server's clock; read from the registry when not given and the ledger
        holds a row of the model);
        ``version``: only the rows about that version (its ``from_version`` or ``to_version``),
        picked by the database: a version's description read every row of a ledger of years;
        ``to_version``: only the rows whose ``to_version`` it is; ``since`` (with ``model``): only
        the rows from the model's newest move that ``MoveCut`` names on, that move included."""
        created = created_ms if created_ms is not None or not model else (lambda: model_created_ms(model))
        with ledger_db.db_errors(self.url, "cannot read the ledger database"):
            with self._engine.connect() as conn:
                return _select(conn, model, actions, limit, current=current, version=version,
                               to_version=to_version, since=since, created=created)


class LockedLedger:
    """The ledger as seen inside ``Ledger.serialized``: reads and appends in the locked transaction."""

    def __init__(self, conn: sa.Connection, model: str):
        self._conn, self.model = conn, model
        self._created: list[int | None] = []        # when MLflow created the model, once read

    def append(self, entry: Entry) -> Entry:
        """Insert ``entry``, stamped with when MLflow created the model (``MODEL_CREATED_MS``, the
        server's clock: what ``_current_start`` cuts a model created again at)."""
        if entry.model != self.model:
            raise ValueError(f"this transaction holds the lock of '{self.model}', not '{entry.model}'")
        created = self._stamp()
        stamps = {MODEL_CREATED_MS: created, SERVER_MS: server_ms()}
        stamps = {k: v for k, v in stamps.items() if v is not None and k not in (entry.details or {})}
        if stamps:
            entry = replace(entry, details={**(entry.details or {}), **stamps})
        return _insert(self._conn, entry)

    def _stamp(self) -> int | None:
        """When MLflow created the model, for a row's stamp; None when it cannot say (no such model,
        or not reachable: the row is written without the stamp, as before stamps were kept)."""
        try:
            return self._created_ms()
        except UserError:
            self._created.append(None)
            return None

    def entries(self, *, actions: tuple[str, ...] | None = None, limit: int | None = None) -> list[Entry]:
        """The rows of the model as it exists now (every read here is for a decision); when
        MLflow created it is read at most once per lock held."""
        return _select(self._conn, self.model, actions, limit, current=True, created=self._created_ms)

    def _created_ms(self) -> int | None:
        if not self._created:
            self._created.append(model_created_ms(self.model))
        return self._created[0]

    def commit(self) -> None:
        """Make the rows appended so far durable now, keeping the lock (an intent row must
        survive a crash of the call that follows it)."""
        self._conn.commit()


def _insert(conn: sa.Connection, entry: Entry) -> Entry:
    entry = replace(entry, at=datetime.now(timezone.utc))
    result = conn.execute(entries_table.insert().values(**_to_row(entry)))
    return replace(entry, id=int(result.inserted_primary_key[0]))


def model_created_ms(model: str) -> int | None:
    """When MLflow created the registered model now named ``model`` (its ``creation_timestamp``,
    ms, the server's clock), read from the registry; None when it holds no such model."""
    from . import versions

    return versions.model_created_ms(model)


def server_ms() -> int | None:
    """The MLflow server's clock now (ms; ``rest.MlflowRest.server_now``), None before an answer
    with a ``Date`` (this process has not reached the server: the row goes without the stamp)."""
    from .rest import rest

    try:
        now = rest().server_now()
    except UserError:
        return None
    return None if now is None else round(now.timestamp() * 1000)


def version_runs(model: str) -> dict[int, str]:
    """The run each version of the registered model now named ``model`` was registered from, read
    from the registry (a ``register`` row from before ``CREATED_MS`` was kept is told by it)."""
    from . import versions

    return {i.version: i.run_id for i in versions.list_versions(model) if i.run_id}


def _created_ms(details: str | None) -> int | None:
    try:
        ms = json.loads(details or "{}").get(CREATED_MS)
    except (ValueError, AttributeError):
        return None
    return ms if isinstance(ms, int) else None


def _run_id(details: str | None) -> str | None:
    try:
        run = json.loads(details or "{}").get("run_id")
    except (ValueError, AttributeError):
        return None
    return run if isinstance(run, str) and run else None


_WALK = 100         # registrations read a query while looking for the model's first one
_STAMPED = ("intent", "promote", "rollback")     # the rows whose stamp (MODEL_CREATED_MS) the cut reads


def _current_start(conn: sa.Connection, model: str,
                   created: int | Callable[[], int | None] | None = None) -> int | None:
    """The id of the first row of ``model`` as MLflow holds it now; ``created``: when MLflow created
    it (ms, the server's clock), or how to read that, asked only when the ledger holds a row of the
    model (None: not known, the ledger alone decides). None: every row counts.

    MLflow numbers a model deleted and created again from 1. Its latest ``register`` row of
    version 1 starts it when that v1 was created after the model (``CREATED_MS``; a row from
    before creation times were kept, by the time it was written or, when that is before, by its run
    being v1's run in MLflow now: ``version_runs``), or an earlier ``register`` row
    (after the previous one of version 1) of a version MLflow created after that v1: two first
    trainings at once get v1 and v2, and v2's row may be written first. Otherwise that v1 row is
    an earlier model's (this one's v1 was registered outside mlops: the MLflow UI, API or
    ``mlflow.register_model``), and so is every row up to the newest registration of a version
    created before the model, or the newest row stamped with an earlier model's creation
    (``MODEL_CREATED_MS``: every row written under the promotion lock); the model's rows start at
    its first registration through mlops (created after it), its first row stamped with its own
    creation, or the first row written at or after its creation (the writer's clock: rows from
    before the stamps were kept), whichever comes first. No such row: the model has none yet
    (found by review, twentieth stop: the deleted model's productions and failed deploys chose the
    new one's rollback target, the gate's baseline and a failed deploy's previous production). A
    model none of whose versions was registered through mlops is cut the same way (found by review,
    twenty-first stop: every row of its name counted, a deleted model's too)."""
    t = entries_table
    registered = sa.select(t.c.id, t.c.details).where(t.c.model == model, t.c.action == "register",
                                                       t.c.outcome == "ok")
    runs: list[dict[int, str]] = []

    def same_run(r) -> bool:
        """A ``register`` row from before ``CREATED_MS`` was kept whose run is its version's run in
        MLflow now: this model's registration, whatever its writer's clock (found by review,
        twenty-second stop: an old ledger written ten minutes behind the server lost the model's
        first ten minutes, v1's gate and promotion among them). Asked only of such a row the
        writer's clock would take for an earlier model's; MLflow is read once per cut."""
        run = _run_id(r.details)
        if run is None or _created_ms(r.details) is not None:
            return False
        if not runs:
            runs.append(version_runs(model))
        version = conn.execute(sa.select(t.c.to_version).where(t.c.id == r.id)).scalar()
        return runs[0].get(version) == run

    # the two latest of version 1, then the registrations between them: not every register row
    # of the model (with its JSON of file hashes) at every read
    firsts = conn.execute(registered.where(t.c.to_version == 1).order_by(t.c.id.desc()).limit(2)).all()
    if not firsts and conn.execute(sa.select(t.c.id).where(t.c.model == model).limit(1)).first() is None:
        return None                 # no row of the model: nothing to cut (and MLflow is not asked)
    try:
        created_ms = created() if callable(created) else created
    except UserError:
        # MLflow not reachable: a model registered through mlops cannot be cut without it; one with no
        # registration here reads as it did before such models were cut (every row counts)
        if firsts or conn.execute(registered.with_only_columns(t.c.id).limit(1)).first() is not None:
            raise
        created_ms = None
    if created_ms is None:          # MLflow holds no such model or does not say: the ledger decides
        return _v1_start(conn, registered, firsts) if firsts else None
    floor = 0
    if firsts:
        start, since = firsts[0].id, _created_ms(firsts[0].details)
        if (since >= created_ms if since is not None else
                _utc(conn.execute(sa.select(t.c.at).where(t.c.id == start)).scalar()) >= _when(created_ms)
                or same_run(firsts[0])):
            return _v1_start(conn, registered, firsts)
        floor = start
    own, after = None, floor
    for _ in range(1_000_000):      # bounded: each query reads up to _WALK registrations after the last
        page = conn.execute(registered.where(t.c.id > after).order_by(t.c.id).limit(_WALK)).all()
        for r in page:
            ms = _created_ms(r.details)
            if (ms is not None and ms >= created_ms) or same_run(r):
                own = r.id
                break
            if ms is not None:
                floor = r.id    # a version created before the model: an earlier model's
        if own is not None or len(page) < _WALK:
            break
        after = page[-1].id
    stamp = f'%"{MODEL_CREATED_MS}": %'
    mine = (f'%"{MODEL_CREATED_MS}": {created_ms},%', f'%"{MODEL_CREATED_MS}": {created_ms}}}%')
    # the moves' stamps (their rows are few beside a ledger of years of deploys; each has one)
    stamped = sa.select(t.c.id).where(t.c.model == model, t.c.action.in_(_STAMPED), t.c.details.like(stamp))
    other = conn.execute(stamped.where(t.c.id > floor, *(t.c.details.not_like(m) for m in mine))
                         .order_by(t.c.id.desc()).limit(1)).scalar()
    if other is not None and (own is None or other < own):
        floor = other               # written under an earlier model's lock (its creation, the server's clock)
    ours = conn.execute(sa.select(sa.func.min(t.c.id)).where(
        t.c.model == model, t.c.action.in_(_STAMPED), t.c.id > floor,
        sa.or_(*(t.c.details.like(m) for m in mine)))).scalar()
    written = conn.execute(sa.select(sa.func.min(t.c.id)).where(t.c.model == model, t.c.id > floor,
                                                                 t.c.at >= _when(created_ms))).scalar()
    found = [i for i in (own, ours, written) if i is not None]
    if found:
        return min(found)
    newest = conn.execute(sa.select(sa.func.max(t.c.id)).where(t.c.model == model)).scalar()
    return (newest or 0) + 1    # no row of this model yet


def _v1_start(conn: sa.Connection, registered, firsts) -> int:
    """The model's first row when its latest ``register`` row of version 1 is its own: that row, or
    an earlier registration (after the previous one of version 1) of a version MLflow created
    after that v1 (two first trainings at once)."""
    t = entries_table
    start, since = firsts[0].id, _created_ms(firsts[0].details)
    if since is None:         # a row from before versions' creation times were recorded
        return start
    floor = firsts[1].id if len(firsts) > 1 else 0
    between = conn.execute(registered.where(t.c.id > floor, t.c.id < start)).all()
    return min([start, *(r.id for r in between if (ms := _created_ms(r.details)) is not None and ms >= since)])


def _when(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, timezone.utc)


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at


@dataclass(frozen=True)
class MoveCut:
    """Where a read of the model's rows starts (``Ledger.entries(since=...)``): at its newest ``ok``
    move of ``production`` (promote or rollback) — to ``to_version`` only, or (``changed``) one that
    changed where production is (``promotion_rules.moved``: ``from_version`` is not ``to_version``).
    ``none``: what is read when there is no such move, ``"all"`` the rows or ``"nothing"``.

    The database finds that move by walking the model's ``(model, id)`` index from its newest end
    and stops there: a decision about the latest move reads the rows since it, not every deploy of
    a ledger of years (a ``sync watch`` asks at every pass)."""

    to_version: int | None = None
    changed: bool = False
    none: str = "all"


def _cut(conn: sa.Connection, model: str, start: int | None, since: MoveCut) -> int | None:
    """The id of the newest move ``since`` names (from ``start`` on), or None."""
    t = entries_table
    q = sa.select(t.c.id).where(t.c.model == model, t.c.action.in_(("promote", "rollback")), t.c.outcome == "ok")
    if start is not None:
        q = q.where(t.c.id >= start)
    if since.to_version is not None:
        q = q.where(t.c.to_version == since.to_version)
    if since.changed:
        q = q.where(t.c.from_version.is_distinct_from(t.c.to_version))
    return conn.execute(q.order_by(t.c.id.desc()).limit(1)).scalar()


def _select(conn: sa.Connection, model: str | None, actions, limit: int | None, *,
            current: bool = False, version: int | None = None, to_version: int | None = None,
            since: MoveCut | None = None, created: int | Callable[[], int | None] | None = None) -> list[Entry]:
    """``current`` (with ``model``): from the first row of the model MLflow created at ``created``
    on (``_current_start``). MLflow numbers a registered model deleted and created
    again from 1, and the rows of the model that was deleted (its productions, gates, deploys) are
    about other versions of the same numbers: a rollback went to a version that never held
    production, a stale gate passed."""
    t = entries_table
    q = sa.select(t)
    if model:
        q = q.where(t.c.model == model)
        start = _current_start(conn, model, created) if current else None
        if since is not None:
            cut = _cut(conn, model, start, since)
            if cut is None and since.none == "nothing":
                return []
            start = start if cut is None else cut
        if start is not None:
            q = q.where(t.c.id >= start)
    if actions:
        q = q.where(t.c.action.in_(actions))
    if version is not None:
        q = q.where(sa.or_(t.c.to_version == version, t.c.from_version == version))
    if to_version is not None:
        q = q.where(t.c.to_version == to_version)
    q = q.order_by(t.c.id.desc())
    if limit:
        q = q.limit(limit)
    return [_from_row(r) for r in reversed(conn.execute(q).all())]
