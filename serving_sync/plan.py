"""What a deploy does on one host: a pure function from (desired version, observed host) to steps.

Observe -> plan -> act, like a Kubernetes controller: ``plan_host`` looks only at plain data
(the parsed ``models.config`` entries, the version states TF Serving reports, where the
``stable`` label points, the versions published and verified on the host) and returns the
ordered steps that bring the host to "``stable`` and unversioned traffic on the desired
version, the previous one kept warm". The deploy executes exactly these steps, ``mlops sync
plan`` prints them, and running it again after any interruption plans only what is left (a
leftover validation entry is dropped, a half-switched config is completed).

TF Serving's rules shape the steps: unversioned requests go to the highest loaded version of
an entry, and a label may only point at a version that is already AVAILABLE. So a version that
has not passed the smoke test on this host is loaded under the validation-only entry
``<model>__validate`` first; only then is it added to the main entry (next to the serving
version, which keeps ``stable``), and then ``stable`` moves. When the new version is LOWER than
the serving one (a rollback), the serving one must be unloaded for unversioned requests to
reach the new one, so it is not kept warm.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from mlops_common.errors import ConfigError

from . import models_config as mc
from .names import check_version
from .retention import DEFAULT_KEEP, choose

AVAILABLE = "AVAILABLE"
MEMORY_FACTOR = 1.2     # TF Serving's own estimate of a SavedModel's memory: 1.2 x its files' size
STABLE = "stable"
KEEP = "keep"     # ConfigTarget.main: leave the main entry exactly as it is


@dataclass(frozen=True)
class MainTarget:
    """The main entry we want: a ``specific`` policy with these versions and labels."""

    versions: tuple[int, ...]
    labels: tuple[tuple[str, int], ...] = ()

    def __post_init__(self):
        vs = tuple(sorted({check_version(v) for v in self.versions}))
        if not vs:
            raise ConfigError("the main entry must keep at least one version loaded")
        object.__setattr__(self, "versions", vs)
        object.__setattr__(self, "labels", tuple(sorted((str(k), int(v)) for k, v in self.labels)))
        for label, v in self.labels:
            if v not in vs:
                raise ConfigError(f"label {label!r} -> {v} but version {v} is not loaded in {list(vs)}")

    @property
    def label_map(self) -> dict[str, int]:
        return dict(self.labels)


@dataclass(frozen=True)
class ConfigTarget:
    """One models.config write: the main entry (a target, KEEP, or None = absent) and the
    validation entry's version (None = no validation entry)."""

    main: MainTarget | str | None
    validate: int | None = None


def loading_versions(states: dict[int, str], policy: str | None, listed: tuple[int, ...]) -> list[int]:
    """Versions still loading. TF Serving keeps a version dropped before its load started at START
    for good (aspired_versions_manager.cc), so START counts only for a version a "specific" entry
    still lists, or any when the entry watches the base path — and none when there is no entry
    (a first deploy put back before its version started loading left it at START)."""
    return sorted(v for v, s in states.items()
                  if s == "LOADING" or (s == "START" and policy is not None
                                        and (policy != "specific" or v in listed)))


@dataclass(frozen=True)
class HostObservation:
    """What one host looks like now, as plain data (see ``observe.observe_host``)."""

    host: str
    model: str
    base_path: str                                   # <serving base>/<model> as TF Serving sees it
    main_policy: str | None = None                   # None: no main entry in models.config
    main_base_path: str | None = None
    main_versions: tuple[int, ...] = ()
    main_labels: tuple[tuple[str, int], ...] = ()
    validate: int | None = None                      # version of the validation entry, if any
    main_states: dict[int, str] = field(default_factory=dict)       # TF Serving: version -> state
    validate_states: dict[int, str] = field(default_factory=dict)
    main_errors: dict[int, str] = field(default_factory=dict)       # TF Serving: why a version's load failed
    stable: int | None = None                        # TF Serving: where `stable` points
    published: tuple[int, ...] = ()                  # version folders TF Serving can load (S3: saved_model.pb there)
    incomplete: tuple[int, ...] = ()                 # S3: numeric folders without saved_model.pb (no version)
    verified: tuple[int, ...] = ()
    held_by_others: tuple[int, ...] = ()             # versions other entries load from our folder
    # other entries that load a new version by themselves: (name, the newest N it loads; None: all)
    loaded_by_others_on_publish: tuple[tuple[str, int | None], ...] = ()
    rename: bool = True                              # False: a store without rename (S3): saved_model.pb goes last
    pulls_from: str | None = None                    # the shared store the host downloads a version from (ssh)

    @property
    def available(self) -> list[int]:
        return sorted(v for v, s in self.main_states.items() if s == AVAILABLE)

    @property
    def serving(self) -> int | None:
        """The version the host serves now: the stable label's, else the unversioned route's."""
        avail = self.available
        if self.stable in avail:
            return self.stable
        return max(avail) if avail else None

    @property
    def loading(self) -> list[int]:
        """Versions of the main entry TF Serving is still loading (it just started or reloaded)."""
        return loading_versions(self.main_states, self.main_policy, self.main_versions)

    @property
    def unversioned(self) -> int | None:
        avail = self.available
        return max(avail) if avail else None

    @property
    def watches_base(self) -> bool:
        """The main entry loads new version directories by itself (a ``latest`` / ``all`` / default
        policy over the base path we publish into): a published version would serve at once."""
        return self.main_policy not in (None, "specific") and mc.same_path(self.main_base_path, self.base_path)

    @property
    def managed(self) -> bool:
        return self.main_policy == "specific" and bool(self.main_versions) \
            and mc.same_path(self.main_base_path, self.base_path)


class Phase(enum.StrEnum):
    """The two phases of a fleet rollout: nothing that serves changes in PREPARE."""

    PREPARE = "prepare"
    SWITCH = "switch"


class StepKind(enum.StrEnum):
    """What one step does (a ``str``: JSON, ledger rows and ``after:<kind>`` test hooks use it)."""

    PIN_MAIN = "pin_main"
    PUBLISH = "publish"
    LOAD_VALIDATION = "load_validation"
    WAIT_VALIDATION = "wait_validation"
    SMOKE_VALIDATION = "smoke_validation"
    SMOKE_MAIN = "smoke_main"
    DROP_VALIDATION = "drop_validation"
    LOAD_MAIN = "load_main"
    WAIT_MAIN = "wait_main"
    SWITCH = "switch"
    VERIFY = "verify"

    @property
    def phase(self) -> Phase:
        """PREPARE: the main entry, its labels and its unversioned route stay as they are; every
        later step changes what the main entry holds (unversioned traffic goes to the highest
        loaded version), so it waits until every host is prepared."""
        return Phase.PREPARE if self in _PREPARE else Phase.SWITCH


_PREPARE = frozenset({StepKind.PIN_MAIN, StepKind.PUBLISH, StepKind.LOAD_VALIDATION, StepKind.WAIT_VALIDATION,
                      StepKind.SMOKE_VALIDATION, StepKind.SMOKE_MAIN})


@dataclass(frozen=True)
class Step:
    kind: StepKind
    version: int
    text: str
    config: ConfigTarget | None = None
    entry: str | None = None                 # which entry a wait / smoke uses
    unload: tuple[int, ...] = ()             # switch: versions to wait out (unversioned -> new)

    def to_dict(self) -> dict:
        return {"kind": str(self.kind), "version": self.version, "text": self.text,
                "phase": str(self.kind.phase)}


@dataclass(frozen=True)
class HostPlan:
    host: str
    model: str
    desired: int
    current: int | None                      # what the host serves now
    final: MainTarget
    previous_kept: int | None                # kept loaded for an instant rollback
    steps: tuple[Step, ...]
    notes: tuple[str, ...] = ()
    retention: tuple[int, ...] = ()          # published versions retention would remove after success
    held_by_others: tuple[int, ...] = ()     # versions other entries load from our folder: retention keeps them

    @property
    def up_to_date(self) -> bool:
        return not self.steps

    @property
    def fast_path(self) -> bool:
        return bool(self.steps) and all(s.kind in ("switch", "verify") for s in self.steps)

    @property
    def publishes(self) -> bool:
        return any(s.kind == "publish" for s in self.steps)

    def phase(self, phase: Phase) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.kind.phase == phase)

    def to_dict(self) -> dict:
        return {"host": self.host, "model": self.model, "desired": self.desired, "current": self.current,
                "up_to_date": self.up_to_date, "fast_path": self.fast_path,
                "final": {"versions": list(self.final.versions), "labels": self.final.label_map},
                "previous_kept": self.previous_kept, "steps": [s.to_dict() for s in self.steps],
                "notes": list(self.notes), "retention_would_remove": list(self.retention)}


def _current_main(obs: HostObservation) -> MainTarget | str | None:
    """The main entry as it is, with labels TF Serving could not honour dropped (so the config
    we write while validating is accepted); unmanaged shapes are kept verbatim."""
    if obs.main_policy is None:
        return None
    if not obs.managed:
        return KEEP
    avail = set(obs.available)
    return MainTarget(obs.main_versions, tuple((k, v) for k, v in obs.main_labels if v in avail))


def _stuck(obs: HostObservation) -> tuple[tuple[int, ...], bool] | None:
    """Versions of our main entry whose load failed (END with an error, still listed), and whether
    the validation entry's version ended; None when there are neither."""
    failed = tuple(x for x in obs.main_versions if x in obs.main_errors) if obs.managed else ()
    val_failed = obs.validate is not None and obs.validate_states.get(obs.validate) == "END"
    return (failed, val_failed) if failed or val_failed else None


def final_target(obs: HostObservation, desired: int, *, keep_previous: bool = True,
                 label: str = STABLE) -> tuple[MainTarget, int | None, list[str]]:
    """The main entry after the deploy, the version kept warm, and notes for people."""
    v, s, notes = desired, obs.serving, []
    labelled = {x for k, x in obs.main_labels if k != label}       # another label's version
    prev = None
    if keep_previous and s is not None:
        if s < v:
            prev = s
        elif s == v:      # a rerun: the warm copy is the newest older one no other label holds
            prev = max((x for x in obs.available if x < v and x in obs.main_versions and x not in labelled),
                       default=None)
        else:
            notes.append(f"previous v{s} is not kept warm because it is newer than v{v} (unversioned "
                         f"requests go to the highest loaded version)")
    if prev is not None and prev not in obs.published:
        # served from another folder (the main entry is taken over): our folder has no v{prev}, so
        # TF Serving could not keep it; listed anyway, the host would never read as up to date
        notes.append(f"previous v{prev} is not kept warm: {obs.base_path}/{prev} has no saved_model.pb (an "
                     f"upload or removal that did not finish), so TF Serving could not load it again"
                     if prev in obs.incomplete else
                     f"previous v{prev} is not kept warm: it is served from {obs.main_base_path}, and "
                     f"{obs.base_path} has no v{prev}")
        prev = None
    versions = {v} if prev is None else {prev, v}
    # another label (a team's `experiment`, a `canary`) keeps its version loaded and labelled when
    # that version is older than v; a newer one would take the unversioned requests: it goes,
    # and the plan says so (it was dropped silently, and retention then deleted its version)
    ours = obs.managed or obs.watches_base          # an entry reading another folder is replaced whole
    for k, x in obs.main_labels:
        if k == label or x not in obs.available or x in versions or not ours or x not in obs.published:
            continue
        if x < v:
            versions.add(x)
        else:
            notes.append(f"label {k} -> v{x} is removed and v{x} unloaded: it is newer than v{v}, so it "
                         f"would take the unversioned requests")
    others = tuple((k, x) for k, x in obs.main_labels if k != label and x in versions)
    return MainTarget(tuple(versions), others + ((label, v),)), prev, notes


def applied(obs: HostObservation, label: str = STABLE) -> bool:
    """TF Serving shows what models.config asks of this model, as far as ``obs`` tells: each listed
    version known to it (a failed load counts: the plan unlists it), no unlisted version or
    validation copy AVAILABLE, ``label`` where the file puts it. False after a deploy killed between
    writing the file and reloading it: without a config poll TF Serving never reads that file, and a
    rerun that finds the file as it wants it must reload it anyway (``HostRun._write``)."""
    if obs.managed:
        listed = set(obs.main_versions)
        if any(obs.main_states.get(v) is None or (obs.main_states[v] == "END" and v not in obs.main_errors)
               for v in listed):
            return False
        if any(s == AVAILABLE and v not in listed for v, s in obs.main_states.items()):
            return False
        want = dict(obs.main_labels).get(label)
        if want is not None and obs.stable != want:
            return False
    if obs.validate is not None and obs.validate not in obs.validate_states:
        return False
    return not stray_validation(obs)


def stray_validation(obs: HostObservation) -> bool:
    """TF Serving serves a validation copy the file does not list (a killed deploy's): the host is
    not up to date, so the deploy's switch reloads the file and TF Serving unloads it."""
    return any(s == AVAILABLE and v != obs.validate for v, s in obs.validate_states.items())


def is_up_to_date(obs: HostObservation, desired: int, final: MainTarget) -> bool:
    return (obs.managed and obs.main_versions == final.versions and tuple(obs.main_labels) == final.labels
            and obs.validate is None and not stray_validation(obs)
            and all(obs.main_states.get(x) == AVAILABLE for x in final.versions)
            and obs.stable == desired and obs.unversioned == desired
            and desired in obs.verified and desired in obs.published)


def plan_host(obs: HostObservation, desired: int, *, keep_previous: bool = True,
              keep: int = DEFAULT_KEEP, label: str = STABLE, fast: bool = False,
              rollback_to: int | None = None) -> HostPlan:
    """The steps that make ``obs.host`` serve ``desired`` (empty when it already does).

    ``rollback_to``: where the registry would roll back to, which retention keeps on every host
    (the deploy's ``deploy_retention.host_retention`` does): the preview must not list it.

    Memory: by default the validation copy is unloaded (``drop_validation``) before the main
    entry loads the version, so a host never holds more than what it serves plus one copy of the
    new version. ``fast`` skips that reload cycle and holds both copies for a moment.
    """
    v = check_version(desired)
    model = obs.model
    vname = mc.validation_name(model)
    s = obs.serving
    final, prev, notes = final_target(obs, v, keep_previous=keep_previous, label=label)
    newest_first = sorted(set(obs.published) | {v}, reverse=True)
    loading = [] if v in obs.published else [
        n for n, newest in obs.loaded_by_others_on_publish if newest is None or v in newest_first[:newest]]
    if loading:
        names = ", ".join(loading)
        notes.append(f"models.config entry {names} reads this model's folder with a policy that loads new "
                     f"versions by itself: it will serve v{v} as soon as it is published, before the smoke "
                     f"test; give it a `specific` version policy")
    preview = retention_preview(obs, v, final, prev, keep=keep, rollback_to=rollback_to)
    if is_up_to_date(obs, v, final):
        return HostPlan(obs.host, model, v, s, final, prev, (), tuple(notes + ["up to date"]),
                        held_by_others=obs.held_by_others)

    steps: list[Step] = []
    # loaded from where we publish (a main entry reading another base path does not count), and
    # its folder still there: one removed while TF Serving keeps it loaded is published again (the
    # fast path never publishes, so the host never read as up to date, and a restart of TF Serving
    # would find nothing to serve)
    loaded = loaded_here(obs, v)
    verified = v in obs.verified
    validated_here = False
    if not loaded:
        main_now = _current_main(obs)
        if obs.watches_base:
            # pin what serves first: the entry would load v{v} the moment it is published, before any
            # smoke test (and again after a put-back); what is loaded and labelled stays as it is
            avail = tuple(obs.available)
            main_now = MainTarget(avail, tuple((k, x) for k, x in obs.main_labels if x in avail)) if avail else None
            pinned = ", ".join(f"v{x}" for x in avail) or "nothing (it serves nothing)"
            steps.append(Step(StepKind.PIN_MAIN, v, f"pin the main entry {model} to {pinned} (its version policy "
                              f"{obs.main_policy} would load v{v} as soon as it is published)",
                              ConfigTarget(main_now, obs.validate), entry=model))
        elif stuck := _stuck(obs):
            # TF Serving never loads a version again while it stays listed after its load failed
            # (a killed deploy's, or a hand edit's): the rerun failed at once with the old error
            failed, val_failed = stuck
            if failed:
                kept = tuple(x for x in obs.main_versions if x not in failed)
                main_now = MainTarget(kept, tuple((k, x) for k, x in main_now.labels if x in kept)) if kept else None
            what = ", ".join([f"v{x} from the main entry {model}" for x in failed]
                             + ([f"the validation entry {vname} (v{obs.validate})"] if val_failed else []))
            steps.append(Step(StepKind.PIN_MAIN, v, f"unlist {what}: its load failed, and TF Serving does not "
                              f"load a failed version again while it stays listed",
                              ConfigTarget(main_now, None if val_failed else obs.validate), entry=model))
        where = "already present: verify its files only" if v in obs.published else \
            f"download from the shared store {obs.pulls_from} on the host, verify, rename" if obs.pulls_from else \
            "upload, verify, rename" if obs.rename else \
            "upload all but saved_model.pb to it, verify, then saved_model.pb last: S3 has no rename"
        steps.append(Step(StepKind.PUBLISH, v, f"publish v{v} as {model}/{v} ({where})"))
        if verified:
            notes.append(f"v{v} passed the smoke test on this host before, but is not loaded: validate it again")
        unchanged = "nothing served yet" if s is None else f"main entry unchanged: stable stays on v{s}"
        steps.append(Step(StepKind.LOAD_VALIDATION, v, f"load v{v} in the validation entry {vname} ({unchanged})",
                          ConfigTarget(main_now, v), entry=vname))
        steps.append(Step(StepKind.WAIT_VALIDATION, v, f"wait until {vname} v{v} is AVAILABLE", entry=vname))
        steps.append(Step(StepKind.SMOKE_VALIDATION, v, f"smoke test v{v} via {vname}/versions/{v}", entry=vname))
        validated_here = True
        stay = {x for x in final.versions if x in obs.available}      # labelled or kept warm: stay loaded
        interim = tuple(sorted({x for x in (s, v) if x is not None} | stay))
        labels = tuple((k, x) for k, x in obs.main_labels if x in interim and x in obs.available) \
            if obs.managed or obs.watches_base else (((label, s),) if s is not None and obs.stable == s else ())
        beside = f" beside v{s} (stable stays on v{s})" if s is not None else ""
        if not fast:
            steps.append(Step(StepKind.DROP_VALIDATION, v, f"unload the validation copy {vname} v{v} "
                              f"(memory: at most one new copy loaded)", ConfigTarget(main_now, None), entry=vname,
                              unload=(v,)))
        steps.append(Step(StepKind.LOAD_MAIN, v, f"load v{v} in the main entry {model}{beside}",
                          ConfigTarget(MainTarget(interim, labels), v if fast else None), entry=model))
        steps.append(Step(StepKind.WAIT_MAIN, v, f"wait until {model} v{v} is AVAILABLE", entry=model))
    elif not verified:
        notes.append(f"v{v} is loaded in the main entry but has not passed the smoke test on this host")
        steps.append(Step(StepKind.SMOKE_MAIN, v, f"smoke test v{v} via {model}/versions/{v}", entry=model))
    else:
        notes.append(f"fast path: v{v} is loaded and was verified on this host: switch at once")
    if obs.validate is not None and not validated_here:
        notes.append(f"drop the leftover validation entry {vname} (v{obs.validate})")
    higher = tuple(x for x in obs.available if x > v and x not in final.versions)
    kept = f", keep v{prev} loaded" if prev is not None else ""
    gone = f", wait until {', '.join(f'v{x}' for x in higher)} unloaded" if higher else ""
    leftover = obs.validate is not None and not validated_here
    drop = ", drop the validation entry" if (validated_here and fast) or leftover else ""
    steps.append(Step(StepKind.SWITCH, v, f"switch {label} and unversioned traffic to v{v}{kept}{drop}{gone} (one "
                      f"config write + reload)", ConfigTarget(final, None), entry=model, unload=higher))
    steps.append(Step(StepKind.VERIFY, v, f"check v{v}'s golden outputs via {model}/labels/{label} and the "
                      f"unversioned route", entry=model))
    return HostPlan(obs.host, model, v, s, final, prev, tuple(steps), tuple(notes), preview,
                    obs.held_by_others)


def retention_preview(obs: HostObservation, desired: int, final: MainTarget, prev: int | None, *,
                      keep: int = DEFAULT_KEEP, rollback_to: int | None = None, partial: tuple[int, ...] = (),
                      in_use: tuple[int, ...] = ()) -> tuple[int, ...]:
    """The version folders the deploy's retention removes after the switch, as
    ``deploy_retention.host_retention`` decides: all but the ``keep`` newest, what serves, the
    previous, what the main entry and other entries keep, ``rollback_to``. ``partial`` (an ``s3://``
    host's folders without ``saved_model.pb``: ``retention.incomplete_versions``) do not count
    toward ``keep`` and go unless kept; ``in_use``: what other fleets' records in an ``s3://`` base
    name (``store.read_uses``), kept. Both are read only by ``sync plan``."""
    v = desired
    protected = final.versions + obs.held_by_others + ((rollback_to,) if rollback_to is not None else ()) \
        + tuple(in_use)
    # v is published whole; ``partial`` folders are no published version but are removed
    versions, partials = choose(sorted(set(obs.published) | set(partial) | {v}), set(partial) - {v},
                                serving=v, previous=prev if prev is not None else obs.serving, keep=keep,
                                protected=protected)
    return tuple(sorted(set(versions) | set(partials)))


def compose(config: mc.ServingConfig, model: str, base_path: str, target: ConfigTarget) -> mc.ServingConfig:
    """``config`` with ``model``'s main and validation entries set as ``target`` says (pure).

    Entries of other models stay verbatim and in place; new entries go at the end.
    """
    vname = mc.validation_name(model)
    if target.main == KEEP:
        main = config.entry(model)
    elif target.main is None:
        main = None
    else:
        main = mc.keeping_extras(config.entry(model),
                                 mc.ModelEntry(model, base_path, "specific", target.main.versions, target.main.labels))
    val = mc.ModelEntry(vname, base_path, "specific", (check_version(target.validate),)) \
        if target.validate is not None else None
    out: list[mc.ModelEntry] = []
    placed = set()
    for e in config.entries:
        if e.name == model:
            if main is not None:
                out.append(main)
                placed.add(model)
        elif e.name == vname:
            if val is not None:
                out.append(val)
                placed.add(vname)
        else:
            out.append(e)
    if main is not None and model not in placed:
        out.append(main)
    if val is not None and vname not in placed:
        out.append(val)
    return mc.ServingConfig(tuple(out))


def loaded_here(obs: HostObservation, v: int) -> bool:
    """``v`` is loaded in the main entry from the folder we publish into, and that folder is still
    there: the deploy loads no copy of it (``plan_host``: no validation entry)."""
    return v in obs.available and v in obs.published and mc.same_path(obs.main_base_path, obs.base_path)


def peak_copies(obs: HostObservation, desired: int, *, fast: bool = False,
                sizes: dict[int, int | None] | None = None) -> tuple[int, ...]:
    """The model copies a host holds at the deploy's peak: what its main entry has loaded now plus
    the new version once (twice with ``fast``: the validation copy beside the main one), unless the
    version is ``loaded_here`` (a version loaded but published again, or loaded from another
    folder, is validated in a copy of its own like any other).

    A validation copy of another version that TF Serving holds now (a killed deploy's, listed in
    the file or not) counts too: it stays loaded until the deploy's own validation copy is
    AVAILABLE (TF Serving's AvailabilityPreservingPolicy loads a new aspired version before it
    unloads the old one), and until the switch when the deploy loads no copy. With ``fast`` the
    peak is then the larger of that moment and the later one with two copies of the new version
    (by ``sizes``; the first when a size is unknown)."""
    held = tuple(obs.available)
    left = tuple(x for x, st in sorted(obs.validate_states.items()) if st == AVAILABLE and x != desired)
    if loaded_here(obs, desired):
        return held + left
    validating = held + left + (desired,)
    if not fast:
        return validating
    both = held + (desired, desired)
    if not left:
        return both
    known = sizes or {}
    if any(known.get(x) is None for x in left + (desired,)):
        return validating
    return validating if sum(known[x] for x in left) > known[desired] else both


def peak_memory(copies: tuple[int, ...], sizes: dict[int, int | None]) -> int | None:
    """``MEMORY_FACTOR`` x the SavedModel sizes of ``copies`` (None when a size is unknown)."""
    if any(sizes.get(v) is None for v in copies):
        return None
    return round(MEMORY_FACTOR * sum(sizes[v] for v in copies))
