"""The source and the manager: which versions should serve, and loading/unloading them.

Modeled on TF Serving's split. The *source* polls each configured model's ``base_path`` and
applies its version policy (``serving_host.versions``) to get the aspired versions. The
*manager* keeps a small state machine per version and asks the availability-preserving policy
(``serving_host.policy``) what to do next: a new version is loaded (in a background thread,
never blocking requests) before an old one is unloaded; a version that fails to load ends in
END with its error and is not retried while it stays aspired. With ``num_load_threads`` 0 (TF
Serving's default) loads and unloads run one at a time, and aspired-version changes wait until
the running one (with its retries) ends, as on TF Serving's single manager thread; with N > 0
loads run in parallel and an unload still runs alone (``--num_unload_threads`` 0). A loaded
version replays its warmup requests (``serving_host.warmup``, unless ``enable_model_warmup`` is
off) before it becomes AVAILABLE; a failed warmup is a failed load. A monitor remembers the last
state of every version ever seen, so unloaded versions stay listed as END.

``reload_config`` is ``ServerCore::ReloadConfig``: validate, check labels against what is
loaded now, switch the source, and wait for models that are new in the config.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

from serving_host import config as cfg
from serving_host import policy as pol
from serving_host import saved_model_loader, warmup
from serving_host.servable import Servable
from serving_host.status import CODES, ServingError, invalid_argument, not_found
from serving_host.versions import aspired, discover, missing_specific, no_versions_reason

log = logging.getLogger("serving_host")

START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"
NUM_INITIAL_LOAD_THREADS_PER_CPU = 4    # server_core.h: num_initial_load_threads = 4.0 * NumSchedulableCPUs()


@dataclass
class VersionState:
    """What ``GetModelStatus`` reports for one version."""
    state: str
    error_code: str = "OK"
    error_message: str = ""

    @property
    def error_code_number(self) -> int:
        return CODES[self.error_code]


@dataclass
class _Harness:
    version: int
    path: str
    state: str = pol.NEW
    is_aspired: bool = True
    servable: Servable | None = None


@dataclass
class _Wait:
    """One ``WaitUntilModelsAvailable``: the events it sees and what each model settled on
    (``""`` AVAILABLE, else the failure's text), decided for all its models at once, at the event
    after which none is unsettled, as the monitor's notification is."""
    since: int
    names: frozenset[str]
    decided: dict[str, str]


def _close_quietly(servable: Servable, name: str, version: int) -> None:
    """Close a version's session; a failure is logged, never left to stop the manager (with one
    load or unload at a time, an exception here would hold every later change)."""
    try:
        servable.close()
    except Exception:  # noqa: BLE001 - logged; the version is gone either way
        log.exception("closing servable version %s failed", sid(name, version))


def _schedulable_cpus() -> int:
    """``port::NumSchedulableCPUs``: the CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def sid(name: str, version: int) -> str:
    """``ServableId::DebugString``."""
    return f"{{name: {name} version: {version}}}"


class Manager:
    """All models of one server: config, source polling, version state machines, labels."""

    def __init__(self, *, max_num_load_retries: int = 5, load_retry_interval_micros: int = 60_000_000,
                 file_system_poll_wait_seconds: int = 1,
                 allow_version_labels_for_unavailable_models: bool = False,
                 num_load_threads: int = 0, enable_model_warmup: bool = True,
                 num_request_iterations_for_warmup: int = 1):
        self.enable_model_warmup = enable_model_warmup
        self.num_request_iterations_for_warmup = num_request_iterations_for_warmup
        self.max_num_load_retries = max(0, max_num_load_retries)
        self.load_retry_interval = max(0.0, load_retry_interval_micros / 1e6)
        self.fs_poll_seconds = file_system_poll_wait_seconds
        self.allow_unavailable_labels = allow_version_labels_for_unavailable_models
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._config_mu = threading.Lock()
        # the source's mutex (file_system_storage_path_source.cc mu_): held by a poll from its
        # listing to handing the versions over, so polls apply in the order they list; not the
        # manager's lock, so requests and status are not held by a slow listing
        self._poll_mu = threading.Lock()
        self._config = cfg.ServerConfig("empty")
        # ServerCore's config_: the last config that passed validation, applied or not (see reload_config)
        self._validated = cfg.ServerConfig("empty")
        # ServerCore's model_labels_to_versions_: None until a model_config_list sets it
        self._labels: dict[str, dict[str, int]] | None = None
        self._source: dict[str, cfg.ModelEntry] = {}
        self._source_error: dict[str, ServingError] = {}
        self._listed: dict[str, frozenset[int]] = {}    # each model's numeric children at its last listing
        self._aspired: dict[str, dict[int, str]] = {}
        self._streams: dict[str, dict[int, _Harness]] = {}
        self._serving: dict[str, dict[int, Servable]] = {}
        self._monitor: dict[str, dict[int, VersionState]] = {}
        # ServerCore waits for new models on a fresh ServableStateMonitor: each state event is
        # numbered, so a wait sees only the events since its reload began
        self._seq = 0
        self._event_seq: dict[str, dict[int, int]] = {}
        self._waits: list[_Wait] = []
        self._notes: dict[str, str] = {}
        self._last_file_error: str | None = None
        # 0 = TF Serving's inline executor: one load/unload at a time (see _reconcile)
        self.serial = num_load_threads <= 0
        self._running = 0           # loads and unloads started and not yet done
        self._pool = ThreadPoolExecutor(max_workers=max(1, num_load_threads),
                                        thread_name_prefix="servable-load")
        # TF Serving's unload executor (--num_unload_threads 0: inline on the manager thread): one
        # unload at a time, never queued behind loads; while one runs nothing else starts
        self._unloading = 0
        self._unload_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="servable-unload")
        self._initial_pool: ThreadPoolExecutor | None = None    # the first config's fast load
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ---------------------------------------------------------------------------------------
    # lifecycle
    # ---------------------------------------------------------------------------------------
    def start_polling(self) -> None:
        """Poll every model's base path every ``file_system_poll_wait_seconds`` (> 0)."""
        if self.fs_poll_seconds > 0:
            self._spawn(self._poll_loop, "fs-poll")

    def watch_config_file(self, path: str, every_seconds: int) -> None:
        """Re-read and re-apply ``path`` every ``every_seconds``, as TF Serving's poll thread does."""
        def loop():
            while not self._stop.wait(every_seconds):
                try:
                    self.reload_config_file(path)
                except Exception:  # a bug must not stop following the config for good
                    log.exception("config-file poll failed")
        self._spawn(loop, "config-poll")

    def _spawn(self, target, name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._unload_pool.shutdown(wait=False, cancel_futures=True)
        if self._initial_pool is not None:
            self._initial_pool.shutdown(wait=False, cancel_futures=True)

    # ---------------------------------------------------------------------------------------
    # config
    # ---------------------------------------------------------------------------------------
    def reload_config_file(self, path: str) -> ServingError | None:
        """One config-file poll: parse and apply; errors are logged (the old config stays).

        TF Serving logs a failing config on every poll; the same error is logged once here
        until the outcome changes, so the log stays readable.
        """
        try:
            self.reload_config(cfg.to_server_config(cfg.read_file(path)))
        except ServingError as exc:
            text = (f"Failed to read ModelServerConfig file: {exc.message}" if exc.message.startswith(
                ("Invalid protobuf file", path)) else
                f"PollFilesystemAndReloadConfig failed to ReloadConfig: {exc.message}")
            if text != self._last_file_error:
                log.error("%s", text)
                self._last_file_error = text
            return exc
        self._last_file_error = None
        return None

    def reload_config(self, new: cfg.ServerConfig, *, wait_timeout: float | None = None) -> None:
        """Apply a config, or raise ServingError and leave the previous one in force.

        Labels are checked against the versions AVAILABLE at this moment. Models new in the
        config are waited for (bounded) until a version is AVAILABLE; versions of models that
        were already configured load in the background.
        """
        with self._config_mu:
            with self._lock:
                cfg.check_transition(self._validated, new)
                if new.kind == "empty":
                    log.info("Taking no action for empty config.")
                    return
                if new.kind != "list":
                    raise invalid_argument("Invalid ServerModelConfig")
                available = {(n, v) for n, vs in self._serving.items() for v in vs}
                old = self._config
                first = old.kind != "list"      # AddModelsViaModelConfigList's is_first_config
                cfg.check_platform_change(self._validated, new)
                # server_core.cc: config_ = new_config here, so a config refused below (labels,
                # platform) is what the next reload is checked against; the label map is swapped
                # before an unsupported platform is refused
                self._validated = new
                since = self._seq
                self._labels = cfg.label_map(new.models, available, self._labels or {},
                                             self.allow_unavailable_labels)
                cfg.check_platforms_supported(new)
                old_names = set(old.by_name()) if old.kind == "list" else set()
                new_by_name = new.by_name()
                self._config = new
                changed = [m for m in new.models
                           if m.name not in self._source or self._source[m.name].source_key() != m.source_key()]
                removed = [n for n in self._source if n not in new_by_name]
                self._source = dict(new_by_name)
                for n in removed:
                    self._source_error.pop(n, None)
                    self._listed.pop(n, None)
                    self._notes.pop(n, None)
                    self._aspired[n] = {}
                    self._reconcile(n)
            if old != new:
                log.info("Adding/updating models.")
                for m in new.models:
                    log.info(" (Re-)adding model: %s", m.name)
            new_names = [m.name for m in new.models if m.name not in old_names]
            with self._fast_initial_load(first):
                self.poll([m.name for m in changed])
                if new_names:   # the first config's wait is load_servables_fast.cc's, with its wording
                    self._wait_until_available(new_names, wait_timeout, since,
                                               "servable(s)" if first else "model(s)")
            if old != new:
                log.info("Finished reloading config")

    @contextmanager
    def _fast_initial_load(self, first: bool):
        """``ConnectSourcesWithFastInitialLoad``: the first config's versions load on
        ``num_initial_load_threads`` (4 x the CPUs) threads in parallel, whatever
        ``num_load_threads`` says, until they are waited for; then the manager's own setting is
        back. Loads still running then finish; with ``num_load_threads`` 0 the next single action
        waits for them (``_running``), as TF Serving's executor reset waits for its threads."""
        if not first:
            yield
            return
        threads = NUM_INITIAL_LOAD_THREADS_PER_CPU * _schedulable_cpus()
        with self._lock:
            serial, self.serial = self.serial, False
            self._initial_pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="servable-initial-load")
        try:
            yield
        finally:
            with self._lock:
                self.serial, pool, self._initial_pool = serial, self._initial_pool, None
                pool.shutdown(wait=False)       # queued loads still run; nothing new goes there
                for n in sorted(self._streams):
                    self._reconcile(n)

    def _wait_until_available(self, names: list[str], timeout: float | None, since: int = -1,
                              what: str = "model(s)") -> None:
        """``WaitUntilModelsAvailable``: until each model's ``Latest`` settles.

        TF Serving's monitor (a fresh one for a later config) walks a model's versions highest
        first and stops at the first AVAILABLE or END one (``HasAnyServableInStreamReachedState``):
        a failed highest version fails the wait even when an older one loads after it. Only
        events since ``since`` count; a version already serving counts as AVAILABLE.
        """
        if timeout is None:
            timeout = 120.0 + (self.max_num_load_retries + 1) * self.load_retry_interval
        deadline = time.monotonic() + timeout
        failures: list[tuple[str, str]] = []    # (model, text): written in name order, below
        with self._lock:
            wait = _Wait(since, frozenset(names), {})
            self._waits.append(wait)
            try:
                pending = list(names)
                while pending and not self._stop.is_set():
                    still = []
                    for n in pending:
                        if n not in self._source:       # replaced by a later config meanwhile
                            continue
                        err = self._failure(n, wait)
                        if err == "":
                            continue
                        if err is not None:
                            failures.append((n, err))
                            continue
                        still.append(n)
                    pending = still
                    remaining = deadline - time.monotonic()
                    if not pending:
                        break
                    if remaining <= 0:      # the settled ones as they are, the others timed out
                        settled = {n: self._settled(n, wait.since) for n in pending}
                        failures += [(n, f"{{Latest({n}) due to error: DEADLINE_EXCEEDED: not available "
                                         f"after {timeout:.0f}s}}" if r is None else r)
                                     for n, r in settled.items() if r != ""]
                        break
                    self._changed.wait(min(remaining, 0.5))
            finally:
                self._waits.remove(wait)
        if failures:    # states_reached is a std::map by ServableId: by model name (one entry each)
            raise ServingError("UNKNOWN", f"{len(failures)} {what} did not become available: {{"
                               + "".join(f + ", " for _, f in sorted(failures)) + "}")

    def _failure(self, name: str, wait: _Wait) -> str | None:
        """``""`` once a new model serves, why it cannot, or None while it still might."""
        self._decide(wait)      # a model that failed in its source no longer holds the others
        if name in wait.decided:
            return wait.decided[name]
        return self._source_failure(name)

    def _source_failure(self, name: str) -> str | None:
        """A new model that cannot load from its base path (TF Serving would wait for ever)."""
        if name in self._source_error:
            return f"{{Latest({name}) due to error: {self._source_error[name]}}}"
        if name in self._aspired and not self._aspired[name]:
            entry = self._source[name]
            why = no_versions_reason(name, entry.base_path, entry.policy, self._listed.get(name, ()))
            return f"{{Latest({name}) due to error: NOT_FOUND: {why}}}"
        return None

    def _settled(self, name: str, since: int) -> str | None:
        """The monitor's walk for ``Latest(name)`` over the events since ``since`` (lock held)."""
        states = self._monitor.get(name, {})
        seqs = self._event_seq.get(name, {})
        serving = self._serving.get(name, {})
        for v in sorted(states, reverse=True):
            if seqs.get(v, 0) <= since and v not in serving:
                continue        # not seen by this wait's monitor
            st = states[v]
            if st.state == AVAILABLE:
                return ""
            if st.state == END:
                why = "" if st.error_code == "OK" else f" due to error: {st.error_code}: {st.error_message}"
                return f"{{{sid(name, v)}{why}}}"
        return None

    def config(self) -> cfg.ServerConfig:
        with self._lock:
            return self._config

    # ---------------------------------------------------------------------------------------
    # source: poll base paths -> aspired versions
    # ---------------------------------------------------------------------------------------
    def _poll_loop(self) -> None:
        while not self._stop.wait(self.fs_poll_seconds):
            try:
                self.poll()
            except Exception:  # a bug must not stop polling for good
                log.exception("file-system poll failed")

    def poll(self, names: list[str] | None = None) -> None:
        """List base paths and hand the aspired versions to the manager.

        One poll at a time (``PollFileSystemAndInvokeCallback`` holds the source's mutex from the
        listing to the callback): a listing is never applied after a newer one. The manager's lock
        is not held while listing: a listing is applied if the model's base path and policy (all it
        depends on) are still the config's, as TF Serving's ``UpdateConfig``, waiting on that mutex,
        lets the poll finish; else the config's own poll of that model lists it again.
        """
        if self.fs_poll_seconds < 0:
            return
        with self._poll_mu:
            self._poll(names)

    def _poll(self, names: list[str] | None) -> None:
        with self._lock:
            entries = [self._source[n] for n in (self._source if names is None else names)
                       if n in self._source]
        for e in entries:
            error, found, children = None, {}, []
            try:
                children = os.listdir(e.base_path)
                found = discover(children, log.warning)
            except (FileNotFoundError, ValueError):     # ValueError: a NUL byte (C++ stops reading there)
                error = invalid_argument(f"Could not find base path {e.base_path} for servable {e.name} "
                                         f"with error NOT_FOUND: {e.base_path} not found")   # FileExists' status
            except NotADirectoryError:
                error = ServingError("FAILED_PRECONDITION", f"{e.base_path} is not a directory "
                                                            f"(base path of servable {e.name})")
            except OSError as exc:
                error = ServingError("UNKNOWN", f"{e.base_path}: {exc.strerror} "
                                                f"(base path of servable {e.name})")
            want = {v: os.path.join(e.base_path, d) for v, d in aspired(e.policy, found, children).items()}
            with self._lock:
                now = self._source.get(e.name)
                if now is None or now.source_key() != e.source_key():
                    continue  # removed, or its base path or policy changed, while listing
                if error is not None:
                    self._note(e.name, f"error:{error}", logging.ERROR,
                               "FileSystemStoragePathSource encountered a filesystem access error: %s",
                               error.message)
                    self._source_error[e.name] = error
                    self._changed.notify_all()
                    continue
                self._source_error.pop(e.name, None)
                self._listed[e.name] = frozenset(found)
                if not found:
                    self._note(e.name, "empty", logging.WARNING,
                               "No versions of servable %s found under base path %s. Did you forget to "
                               "name your leaf directories as numbers (eg. '/1/', '/2/', etc.)?",
                               e.name, e.base_path)
                else:
                    miss = missing_specific(e.policy, found)
                    self._note(e.name, f"ok:{sorted(want)}:{miss}", logging.WARNING if miss else None,
                               "Version(s) %s of servable %s, requested as 'specific' versions in the "
                               "servable's version policy, were not found in the file system",
                               miss, e.name)
                if self._aspired.get(e.name) != want:
                    for v in sorted(set(want) - set(self._aspired.get(e.name, {}))):
                        log.info("Aspiring version for servable %s from path: %s", e.name, want[v])
                    self._aspired[e.name] = want
                    self._reconcile(e.name)
                self._changed.notify_all()

    def _note(self, name: str, key: str, level: int | None, fmt: str, *args) -> None:
        """Log a source condition once, when it starts (not on every poll)."""
        if self._notes.get(name) == key:
            return
        self._notes[name] = key
        if level is not None:
            log.log(level, fmt, *args)

    # ---------------------------------------------------------------------------------------
    # manager: harness state machine driven by the availability-preserving policy
    # ---------------------------------------------------------------------------------------
    def _set_state(self, name: str, version: int, state: str, code: str = "OK", message: str = "") -> None:
        self._monitor.setdefault(name, {})[version] = VersionState(state, code, message)
        self._seq += 1
        self._event_seq.setdefault(name, {})[version] = self._seq
        for wait in self._waits:        # the monitor decides at the event, not when the waiter wakes
            self._decide(wait)
        self._changed.notify_all()

    def _decide(self, wait: _Wait) -> None:
        """``ShouldSendStateReachedNotification`` (lock held): once every awaited model (but those
        that failed here before any state event: ``_source_failure``) has settled, each one's
        ``Latest`` walk at this moment is its answer, all decided together."""
        if wait.decided:
            return
        names = [n for n in wait.names if n in self._source and self._source_failure(n) is None]
        results = {n: self._settled(n, wait.since) for n in names}
        if all(r is not None for r in results.values()):
            wait.decided.update(results)

    def _reconcile(self, name: str) -> None:
        """Apply aspired-version changes and start what the policy asks (lock held).

        Serial (``num_load_threads`` 0): TF Serving's manager thread runs a load or unload inline,
        so while one runs (retries included) every aspired change waits; when it ends, all
        waiting changes apply and the next single action starts (unloads first).

        Parallel (N > 0): loads go to the thread pool, but an unload still runs on TF Serving's
        manager thread (``--num_unload_threads`` 0), so while one runs no change applies and no
        other load or unload starts (loads already running go on); when it ends, every model's
        waiting changes apply.
        """
        if not self.serial:
            if self._unloading:
                return
            self._apply_aspired(name)
            while (action := self._next_action(name)) is not None:
                self._start(name, action)
                if action.kind == "unload":
                    return
            return
        if self._running or self._stop.is_set():
            return
        for n in sorted(set(self._aspired) | set(self._streams)):
            self._apply_aspired(n)
        actions = [(a.kind != "unload", n, a) for n in sorted(self._streams)
                   if (a := self._next_action(n)) is not None]
        if actions:
            _, n, action = min(actions, key=lambda x: x[:2])
            self._start(n, action)

    def _apply_aspired(self, name: str) -> None:
        """``FlushServables`` + ``HandlePendingAspiredVersionsRequests`` for one model (lock held).

        A version dropped before it started loading is removed without a state event, so it
        stays listed as START, as in TF Serving. A request naming a version that is still there
        but no longer aspired (loading, loaded, unloading) waits, whole, until that version has
        ended (``ContainsAnyReaspiredVersions``); a version that failed and is still aspired is
        not loaded again (``enable_reload_servables_with_error`` is off).
        """
        want = self._aspired.get(name, {})
        stream = self._streams.setdefault(name, {})
        self._flush(stream)
        if not any(v in want and not h.is_aspired for v, h in stream.items()):
            for v, h in stream.items():
                if v not in want:
                    h.is_aspired = False
            for v, path in sorted(want.items()):
                if v not in stream:
                    stream[v] = _Harness(v, path)
                    self._set_state(name, v, START)
            self._flush(stream)
        if not stream:
            self._streams.pop(name, None)

    @staticmethod
    def _flush(stream: dict[int, _Harness]) -> None:
        """``FlushServables``: forget versions no longer aspired that are not (or no more) loaded."""
        for v, h in list(stream.items()):
            if not h.is_aspired and h.state in (pol.NEW, pol.DISABLED, pol.ERROR):
                del stream[v]

    def _next_action(self, name: str) -> pol.Action | None:
        if self._stop.is_set():
            return None
        stream = self._streams.get(name, {})
        return pol.next_action([pol.Snapshot(h.version, h.state, h.is_aspired) for h in stream.values()])

    def _start(self, name: str, action: pol.Action) -> None:
        h = self._streams[name][action.version]
        self._running += 1
        if action.kind == "load":
            h.state = pol.LOADING          # LOADING is published once its resources are reserved
            self._submit(self._load, name, h)
        else:
            h.state = pol.UNLOADING
            self._unloading += 1
            self._set_state(name, h.version, UNLOADING)
            self._serving.get(name, {}).pop(h.version, None)
            log.info("Quiescing servable version %s", sid(name, h.version))
            self._submit(self._unload, name, h, pool=self._unload_pool)

    def _done(self, name: str, *, unload: bool = False) -> None:
        """A load or unload ended (lock held): let the next change through."""
        self._running -= 1
        if unload:
            self._unloading -= 1
            if not self.serial:     # the manager thread is free again: every model's changes
                for n in sorted(set(self._aspired) | set(self._streams)):
                    self._reconcile(n)
                return
        self._reconcile(name)

    def _submit(self, fn, *args, pool: ThreadPoolExecutor | None = None) -> None:
        try:
            (pool or self._initial_pool or self._pool).submit(fn, *args)
        except RuntimeError:  # shutting down
            pass

    def _retried(self, name: str, h: _Harness, what: str, attempt_once):
        """``util/retrier.cc`` Retry: ``attempt_once()`` until it returns, at most
        ``max_num_load_retries`` more times, stopped after the running attempt when the version
        is dropped; (result, None) or (None, the last error)."""
        attempt = 0
        while True:
            try:
                return attempt_once(), None
            except ServingError as exc:
                error = exc
            except Exception as exc:  # noqa: BLE001 - any load failure ends the version in END
                error = ServingError("UNKNOWN", f"{exc.__class__.__name__}: {exc}")
            if attempt >= self.max_num_load_retries or not h.is_aspired:
                return None, error  # util/retrier.cc: a drop stops the retries after the running attempt
            attempt += 1
            log.info("Retrying %s of servable version %s (retry %d of %d) after: %s",
                     what, sid(name, h.version), attempt, self.max_num_load_retries, error)
            if self._stop.wait(self.load_retry_interval):  # a drop does not cut the wait short
                return None, error

    def _reserve(self, name: str, h: _Harness) -> ServingError | None:
        """``BasicManager::ApproveLoad``: reserve the version's resources before it loads, which
        walks its folder (``model_disk_size``), retried as a load is; a failure is the version's
        END without a load (and without LOADING), its text wrapped as ReserveResources wraps it."""
        _, error = self._retried(name, h, "resource reservation", lambda: saved_model_loader.model_disk_size(h.path))
        if error is None:
            return None
        return ServingError(error.code, f"Error while attempting to reserve resources to load servable "
                                        f"{sid(name, h.version)}: {error.message}")

    def _load(self, name: str, h: _Harness) -> None:
        error = self._reserve(name, h)
        if error is not None:
            with self._lock:
                h.state = pol.ERROR
                self._set_state(name, h.version, END, error.code, error.message)
                log.warning("%s", error.message)
                self._done(name)
            return
        with self._lock:
            self._set_state(name, h.version, LOADING)   # ExecuteLoad, once the load is approved
            log.info("Approving load for servable version %s", sid(name, h.version))
        log.info("Loading servable version %s", sid(name, h.version))
        servable, error = self._retried(name, h, "load", lambda: self._load_and_warm(name, h))
        with self._lock:
            if error is None and h.is_aspired and not self._stop.is_set():
                h.state, h.servable = pol.READY, servable
                self._serving.setdefault(name, {})[h.version] = servable
                self._set_state(name, h.version, AVAILABLE)
                log.info("Successfully loaded servable version %s", sid(name, h.version))
            elif error is not None:
                h.state = pol.ERROR
                self._set_state(name, h.version, END, error.code, error.message)
                log.error("Loading servable: %s failed: %s", sid(name, h.version), error)
            if error is not None or h.state == pol.READY:
                self._done(name)
                return
            # dropped while loading (parallel only; a drop is never undone): loader_harness.cc
            # UnloadDueToCancelledLoad unloads it on this thread, no manager lock held (a session
            # closing must not hold requests and status), then reports END CANCELLED
            log.info("Unloading just-loaded servable version %s", sid(name, h.version))
        _close_quietly(servable, name, h.version)
        with self._lock:
            h.state = pol.DISABLED
            self._set_state(name, h.version, END, "CANCELLED", "Loading of servable cancelled")
            self._done(name)

    def _load_and_warm(self, name: str, h: _Harness) -> Servable:
        """Load a version and replay its warmup requests; a failed warmup fails the load."""
        servable = Servable.load(name, h.version, h.path)
        try:
            if self.enable_model_warmup:
                warmup.run(servable, h.path, model_name=name, version=h.version,
                           num_request_iterations_for_warmup=self.num_request_iterations_for_warmup)
            saved_model_loader.model_disk_size(h.path)    # SimpleLoader's post-load estimate, part of the load
        except BaseException:
            servable.close()
            raise
        return servable

    def _unload(self, name: str, h: _Harness) -> None:
        log.info("Unloading servable version %s", sid(name, h.version))
        if h.servable is not None:
            _close_quietly(h.servable, name, h.version)     # the manager must go on (serial: _done)
        with self._lock:
            h.state, h.servable = pol.DISABLED, None
            self._set_state(name, h.version, END)
            log.info("Done unloading servable version %s", sid(name, h.version))
            self._done(name, unload=True)

    # ---------------------------------------------------------------------------------------
    # requests
    # ---------------------------------------------------------------------------------------
    @contextmanager
    def handle(self, name: str, version: int | None = None, label: str | None = None):
        """A loaded version for a request (``ServerCore::GetServableHandle``).

        No version and no label: the highest AVAILABLE version. A label resolves through the
        config's ``version_labels``. The version cannot be unloaded until the handle is released.
        """
        if not name:
            raise invalid_argument("ModelSpec has no name specified.")
        with self._lock:
            if label is not None:
                if self._labels is None:        # GetModelVersionForLabel before any label map
                    raise ServingError("UNAVAILABLE", f"Model labels does not init yet.{label}")
                version = self._labels.get(name, {}).get(label)
                if version is None:
                    raise invalid_argument(f"Unrecognized servable version label: {label}")
            versions = self._serving.get(name) or {}
            if version is None:
                if not versions:
                    raise not_found(f"Servable not found for request: Latest({name})")
                servable = versions[max(versions)]
            else:
                servable = versions.get(version)
                if servable is None:
                    raise not_found(f"Servable not found for request: Specific({name}, {version})")
            servable.acquire()
        try:
            yield servable
        finally:
            servable.release()

    def model_status(self, name: str, version: int | None = None) -> list[tuple[int, VersionState]]:
        """``GetModelStatusImpl``: versions (highest first) with state and last status."""
        with self._lock:
            states = self._monitor.get(name, {})
            if version is not None:
                st = states.get(version)
                if st is None:
                    raise not_found(f"Could not find version {version} of model {name}")
                return [(version, st)]
            if not states:
                raise not_found(f"Could not find any versions of model {name}")
            return sorted(states.items(), key=lambda kv: -kv[0])

    def labels(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {k: dict(v) for k, v in (self._labels or {}).items()}
