"""Upload a version once to a shared S3 store; SSH hosts pull it with presigned URLs.

Without a store every SSH host receives the model over its own stream from the deploying
machine, so the bytes leaving it grow with the fleet. With ``store = "s3://bucket/prefix"`` in
the hosts file the deploy publishes the version there ONCE, through the S3 transport's own
verified publish (checksummed PUTs, ``saved_model.pb`` last, immutable, idempotent), then each
SSH host's publish runs a script that downloads the objects with curl or wget, hashes them on
the host and is judged against the manifest exactly like a streamed upload (``publish``:
non-numeric temporary directory, verified, then renamed; a mismatch is refused).

Secrets: a presigned URL is a credential for its lifetime. URLs are made per host right before
its publish, signed SigV4, expire after ``MLOPS_STORE_URL_EXPIRY`` seconds (default 900) plus
one second per MB of the version (``url_lifetime``), travel on the
script's stdin (never on a process's argv: curl reads them with ``-K -``, wget with ``-i -``),
written only once the script printed its per-call nonce line (``ssh_scripts.go_line``: a forced
command on the host's account is sent nothing),
are never logged, and ``hide_presigned_urls`` removes them from any host error output we repeat.

Fleets sharing a store (two hosts files naming the same ``store``): the store's own deploy lock
(``<store>/.serving_sync/lock``, the hosts' ``HostLock`` on the S3 transport, conditional PUT and
``If-Match`` DELETE) is held while a deploy uploads to it and while it cleans it up, never longer:
a second deploy waits for it (up to ``MLOPS_LOCK_TTL``), so an upload that fails removes only its
own objects, and no clean-up runs during an upload. Each deploy records, under that lock and before
it uploads, what each of its hosts keeps or is about to pull (``<store>/.serving_sync/uses/<model>/
<host>.json``: the versions, when written), and again after its clean-up; a clean-up keeps every
version a record written in the last ``USE_RECORD_DAYS`` days names (a fleet's pull happens within
its deploy, which writes its record first; an older record is a host no deploy has reached since,
whose versions a later deploy uploads again if it needs them). A clean-up also keeps what the
store's own ``models.config`` names (``served_from``): an ``s3://`` host whose base is the store
serves from it whatever its record's age, or with no record at all.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from mlops_common import log, settings

from . import host_config
from . import models_config as mc
from .errors import AuthFailed
from .hosts import Host, Store, base_key
from .layout import STATE_DIR, version_of, version_path
from .manifest import Manifest
from .parallel import settle

logger = log.get("sync.store")

DEFAULT_EXPIRY = 900.0
MAX_EXPIRY = 7 * 24 * 3600.0     # the SigV4 limit for presigned URLs
MIN_PULL_RATE = 1e6              # bytes/s a host's download may slow to before the URLs run out
_URL_RE = re.compile(r"https?://\S+")
USE_RECORD_DAYS = 30             # a host's record of the versions it keeps counts this long
USES_DIR = f"{STATE_DIR}/uses"   # <store>/.serving_sync/uses/<model>/<host key>.json


def expiry() -> float:
    """Seconds a presigned URL stays valid: ``MLOPS_STORE_URL_EXPIRY`` or 15 minutes."""
    return settings.seconds_env("MLOPS_STORE_URL_EXPIRY", DEFAULT_EXPIRY, most=MAX_EXPIRY,
                                must=f"seconds between 1 and {MAX_EXPIRY:.0f}")


def check_settings(hosts, *, credentials: bool = True) -> None:
    """Refuse a bad setting of the deploy before it reads the registry or touches a host (and
    before ``sync rollback`` moves production): ``MLOPS_LOCK_TTL``, read by every host's lock (a
    rollback moved production, then refused it at the first lock), and ``MLOPS_STORE_URL_EXPIRY``
    when a host of ``hosts`` pulls from a store (it was refused only at the upload, after the
    version had been downloaded). ``sync plan`` refuses them too, as the deploy it previews does.
    So are missing S3 credentials for a store (``check_credentials``), unless ``credentials`` is
    False: the deploy, its plan and ``sync rollback`` check them once they know a host pulls the
    version (``check_pulls``): one that only switches hosts uploads nothing and needs none."""
    settings.lock_ttl()
    stores = {h.store.url: h.store for h in hosts if getattr(h, "store", None) is not None}
    if stores:
        expiry()
        if credentials:
            check_credentials(next(iter(stores.values())))


def check_pulls(pulling) -> None:
    """``check_credentials`` for the hosts of ``pulling`` that download the version from a store
    (the deploy uploads it there first); nothing to check without such a host."""
    stores = [h.store for h in pulling if getattr(h, "store", None) is not None]
    if stores:
        check_credentials(stores[0])


def check_credentials(store: Store) -> None:
    """``AuthFailed`` when boto3's chain finds no credentials (environment, profile, role) for the
    upload to ``store``: the deploy refused only at the upload, once the whole SavedModel had been
    downloaded from MLflow, and ``sync plan`` (exit 0) and ``sync rollback`` (production moved
    first) said nothing. Resolved locally, as the upload's client does; nothing is sent to S3."""
    import boto3

    try:
        found = boto3.Session().get_credentials() is not None
    except Exception:  # noqa: BLE001 - a broken profile: the client names it, at the upload as before
        return
    if not found:
        raise AuthFailed(f"{store.url}: no S3 credentials to upload the version to the shared store; set "
                         f"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or an AWS profile); nothing was changed")


def check_reachable(store: Store) -> None:
    """The deploy's upload would be refused by ``store`` (a bucket that does not exist, credentials
    S3 rejects, access denied, an endpoint that does not answer): one line, before the version is
    downloaded from the registry (it was refused only at the upload, after the whole download) and
    in ``sync plan`` (it promised the pull). One LIST of at most one key, nothing written."""
    from mlops_common.errors import UserError, reworded

    from .transports.s3 import S3Transport

    t = S3Transport(store.target.bucket, store.target.path)
    try:
        t._any_object(t._dir_prefix(""))
    except UserError as exc:
        raise reworded(exc, f"{exc.message} (the shared store the hosts pull the version from; nothing was "
                            f"changed)") from None


@dataclass(frozen=True)
class Pull:
    """What one host downloads: the manifest's directories and a presigned URL per file."""

    store_url: str
    manifest: Manifest = field(repr=False)
    urls: dict = field(repr=False)          # rel path -> presigned GET URL (a secret)

    @property
    def temporary_credentials(self) -> bool:
        """Signed with temporary credentials (``X-Amz-Security-Token`` in the URLs: an assumed role,
        ``AWS_SESSION_TOKEN``): the URLs stop working when those expire, whatever ``X-Amz-Expires``."""
        return any("X-Amz-Security-Token=" in u for u in self.urls.values())

    def script_input(self) -> bytes:
        """The host script's stdin: ``d<TAB>dir`` and ``f<TAB>path<TAB>url<TAB>size`` lines."""
        lines = [f"d\t{d}" for d in self.manifest.dirs]
        lines += [f"f\t{f.path}\t{self.urls[f.path]}\t{f.size}" for f in self.manifest.files]
        return ("\n".join(lines) + "\n").encode()


def hide_presigned_urls(text: str) -> str:
    """Host output with every URL replaced (a presigned URL must never reach a log)."""
    return _URL_RE.sub("<presigned URL>", text)


def s3_host_note(host: Host) -> str | None:
    """Item 9: the one-line truth about ``s3://`` hosts (None for other targets)."""
    if host.target.scheme != "s3":
        return None
    return (f"{host.target.url}: TF Serving must read S3 itself; stock tensorflow/serving images since 2.7 "
            f"(2.21.0 included) have no s3 file system (tensorflow/serving#1963): use a build with one, "
            f"or an ssh:// host with store = \"{host.target.url}\" in the hosts file")


class StoreCopies:
    """Each distinct store of a deploy, uploaded once (thread-safe), and per-host presigning."""

    def __init__(self, model: str, version: int, *, uses: dict | None = None, held=frozenset(),
                 break_lock: str | None = None, give_up=None):
        self.model, self.version = model, version
        self.break_lock = break_lock  # --break-lock TOKEN: the store's lock too, when it is that one
        self.give_up = give_up        # ``sync watch`` asked to stop: no wait for another fleet's store lock
        self.uses = uses or {}       # store url -> {host: versions it keeps or pulls}, recorded first
        self.held = held             # base_key of the S3 bases whose lock this deploy already holds (-> that lock)
        self._done: dict[str, dict] = {}
        self._lock = threading.Lock()

    def upload(self, store: Store, local_dir, manifest: Manifest) -> dict:
        """Publish the version under the store (verified; 0 bytes when already there), under the
        store's lock, after recording what this deploy's hosts keep and pull."""
        from . import cancel
        from .publish import publish
        from .transports.s3 import S3Transport

        expiry()     # refused before anything is uploaded (``check_settings``: before the deploy began)
        with self._lock:
            if store.url not in self._done:
                t = S3Transport(store.target.bucket, store.target.path)
                with store_lock(t, store, self.model, self.held, break_lock=self.break_lock,
                                give_up=self.give_up) as lock:
                    record_uses(t, self.model, self.uses.get(store.url, {}))
                    logger.info("uploading v%d of '%s' once to the shared store %s", self.version, self.model,
                                store.url)
                    # an interrupt (SIGTERM from a cancelled CI job), or the lock's thread finding the
                    # lock taken over, stops it between objects
                    # ... and the lock is read once more right before saved_model.pb completes it
                    r = publish(t, self.model, self.version, local_dir, manifest,
                                lambda _n: (cancel.check(), still_held(lock)),
                                before_final=lock.check if lock is not None else None)
                logger.info("%s: v%d %s (%d bytes in %.1fs)", store.url, self.version,
                            r.status.replace("_", " "), r.bytes_transferred, r.seconds)
                self._done[store.url] = {"store": store.url, "status": r.status,
                                         "bytes_transferred": r.bytes_transferred, "seconds": round(r.seconds, 3)}
            return self._done[store.url]

    def results(self) -> list[dict]:
        return list(self._done.values())

    def pull(self, host: Host, manifest: Manifest) -> Pull | None:
        """Fresh presigned URLs for ``host`` (None: the host has no store or it was not uploaded)."""
        store = host.store
        if store is None or store.url not in self._done:
            return None
        return presign(store, self.model, self.version, manifest, url_lifetime(expiry(), manifest.total_size))


def url_lifetime(setting: float, total_size: int) -> float:
    """How long a host's URLs stay valid: the setting, plus the time the whole version takes at
    ``MIN_PULL_RATE`` (the host fetches the files one after another, so on a slow link the last
    URL is used long after it was made), at most ``MAX_EXPIRY``."""
    return min(MAX_EXPIRY, setting + total_size / MIN_PULL_RATE)


def retire(store: Store, model: str, *, serving: int, previous: int | None, keep: int,
           protected: tuple[int, ...], uses: dict | None = None, held=frozenset(),
           break_lock: str | None = None, give_up=None) -> dict:
    """Remove from ``store`` the versions of ``model`` that no host needs any more, by the hosts'
    own rule (``retention``: all but the ``keep`` newest, what serves, the rollback target and
    what a host keeps loaded), and uploads that died. Without it every version deployed stayed in
    the bucket for good. A later deploy of a removed version uploads it again.

    Under the store's lock: ``uses`` (this deploy's hosts -> the versions each keeps) is recorded
    first, then every host's record of every fleet (``USE_RECORD_DAYS``) is kept too, and every
    version the store's own ``models.config`` names (``served_from``), whatever the records' age."""
    from . import retention
    from .transports.s3 import S3Transport

    t = S3Transport(store.target.bucket, store.target.path)
    with store_lock(t, store, model, held, break_lock=break_lock, give_up=give_up) as lock:
        record_uses(t, model, uses or {})
        in_use = read_uses(t, model)
        served = served_from(t, model)
        rp = retention.plan(t, model, serving=serving, previous=previous, keep=keep,
                            protected=tuple(sorted(set(protected) | in_use | served)))
        if lock is not None:
            lock.refresh()      # deleting: only while the store is still ours (LockHeld if taken over)
        retention.apply(t, rp)
    return {**rp.to_dict(), "in_use": sorted(in_use), "served": sorted(served)}


def served_from(t, model: str) -> set[int]:
    """The versions of ``model`` that a ``models.config`` in the store's prefix names: an ``s3://``
    host whose base is the store serves them straight from the bucket (its TF Serving reads that
    file), and its use record may be older than ``USE_RECORD_DAYS`` (written only when a deploy
    changes the host) or missing (its deploy failed before retention). One GET; a listing only
    for an entry whose policy loads the newest versions, whose newest complete folders count
    (what TF Serving loads once the clean-up removed the dead ones). A file that cannot be read is one line
    (``ConfigError``): the clean-up removes nothing then."""
    from .retention import incomplete_versions

    config = host_config.read(t)
    listed = (tuple(v for n in t.list_dir(model) if (v := version_of(n)) is not None)
              if mc.loads_newest(config, model) else ())
    # the newest complete ones: TF Serving lists a folder without saved_model.pb too, fails to load
    # it and keeps the older version loaded; this clean-up removes such a folder (no live upload
    # under the lock), and TF Serving's next poll then loads the newest complete ones
    dead = set(incomplete_versions(t, model, listed))
    return set(mc.versions_named(config, model, tuple(v for v in listed if v not in dead)))


@contextlib.contextmanager
def store_lock(t, store: Store, model: str, held=frozenset(), *, break_lock: str | None = None, give_up=None):
    """The store's deploy lock (a ``HostLock`` on its S3 base), waited for up to ``MLOPS_LOCK_TTL``:
    another fleet's upload or clean-up there takes seconds to minutes. Not taken again when this
    deploy holds it already (an ``s3://`` host whose base is the store: ``held`` maps its base_key to
    that host's lock). Yields the ``HostLock``, the host's when already held (None when ``held`` does
    not give it): its heartbeat thread's finding (``lost``) is the caller's to check, and a clean-up
    beats it before deleting (without it, one under a host's lock taken over meanwhile deleted the
    new owner's upload under way).
    ``break_lock`` (the deploy's ``--break-lock TOKEN``) takes it over at once when it is that lock
    (a SIGKILLed deploy's, seen from another machine, waited for the TTL otherwise). ``give_up``
    (``sync watch`` asked to stop): the wait ends at once with the owner's ``LockHeld``, as the wait
    for a host's lock does; nothing is taken, nothing changed."""
    from .connections import acquire

    if base_key(store.target) in held:
        yield held.get(base_key(store.target)) if isinstance(held, dict) else None
        return
    taken: list = []        # recorded before it is tried: a forced stop as the lock was taken left it
    try:
        yield acquire(t, break_lock=break_lock, wait=settings.lock_ttl(), purpose="shared-store upload or clean-up",
                      model=model, record=taken.append, give_up=give_up)
    finally:
        for lock in taken:
            lock.release()


def still_held(lock) -> None:
    """LockHeld when the store lock's heartbeat thread found it taken over (no I/O): an upload
    kept going, and another fleet's clean-up removed its objects (no ``saved_model.pb`` yet);
    HostUnreachable when its beats kept failing (``HostLock.kept``)."""
    if lock is not None:
        lock.kept()


def host_uses(hosts_versions) -> dict:
    """{record name: versions} for ``(host, versions)`` pairs: one record per base directory (two
    hosts files naming one host share it; a host's name in a hosts file does not matter)."""
    out: dict[str, set] = {}
    for host, versions in hosts_versions:
        key = hashlib.sha256(repr(base_key(host.target)).encode()).hexdigest()[:24]
        out.setdefault(key, set()).update(int(v) for v in versions if v is not None)
    return {k: sorted(v) for k, v in out.items()}


def record_uses(t, model: str, uses: dict) -> None:
    """Write each host's record (the caller holds the store's lock)."""
    now = time.time()

    def put(item) -> None:
        key, versions = item
        t.write_file_atomic(f"{USES_DIR}/{model}/{key}.json",
                            json.dumps({"versions": list(versions), "written": now}).encode())

    # every write returns before this does, a forced stop too (the caller then releases the lock:
    # a ThreadPoolExecutor's worker started as the stop landed still wrote after it, over a later
    # deploy's record of the same host)
    for _, exc in settle(put, sorted(uses.items()), workers=8, name="store_uses", inline=False):
        if exc is not None:
            raise exc


def read_uses(t, model: str, *, now: float | None = None, prune: bool = True,
              skip: frozenset[str] = frozenset()) -> set[int]:
    """Every version a host's record from the last ``USE_RECORD_DAYS`` names (older records go,
    unless ``prune`` is False: ``sync plan`` changes nothing); ``skip``: record names (``host_uses``
    keys) left out, as a host's own that its deploy rewrites first."""
    now = time.time() if now is None else now
    names = [n for n in t.list_dir(f"{USES_DIR}/{model}") if n.endswith(".json") and n[:-5] not in skip]

    def get(name: str) -> tuple[str, dict | None]:
        try:
            d = json.loads(t.read_file(f"{USES_DIR}/{model}/{name}"))
            return name, {"versions": [int(v) for v in d["versions"]], "written": float(d["written"])}
        except FileNotFoundError:
            return name, None
        except (ValueError, KeyError, TypeError):
            return name, {"versions": [], "written": 0.0}      # unreadable: not ours to trust, goes

    with ThreadPoolExecutor(8) as pool:     # reads only: a worker a forced stop left writes nothing
        records = list(pool.map(get, names))
    out: set[int] = set()
    for name, d in records:
        if d is None:
            continue
        if now - d["written"] > USE_RECORD_DAYS * 86400:
            if not prune:
                continue
            logger.info("%s: the record %s of '%s' is older than %d days; removing it", t.url, name, model,
                        USE_RECORD_DAYS)
            t.remove_file(f"{USES_DIR}/{model}/{name}")
            continue
        out.update(d["versions"])
    return out


def presign(store: Store, model: str, version: int, manifest: Manifest, expires_in: float) -> Pull:
    """Presigned GET URLs for every file of the version (local signing: no request is sent)."""
    from .transports.s3 import S3Transport

    t = S3Transport(store.target.bucket, store.target.path, client=_signer(store))
    prefix = t._dir_prefix(version_path(model, version))
    urls = {f.path: t.client.generate_presigned_url(
        "get_object", Params={"Bucket": store.target.bucket, "Key": prefix + f.path},
        ExpiresIn=int(expires_in)) for f in manifest.files}
    return Pull(store.url, manifest, urls)


def _signer(store: Store):
    """A boto3 client that signs with SigV4 for the endpoint the hosts use (``store_endpoint``, else
    the deploying machine's) and, on AWS, for the bucket's region. boto3's default presigns SigV2
    query strings there, which AWS refuses for buckets made since 2020 and in newer regions."""
    from mlops_common import s3

    if store.endpoint is None and s3.endpoint_url() is None:
        return s3.client(signature_version="s3v4", region_name=_bucket_region(store.target.bucket))
    return s3.client(endpoint=store.endpoint, signature_version="s3v4")


def _bucket_region(bucket: str) -> str | None:
    """The AWS region of ``bucket`` (``x-amz-bucket-region`` of a HEAD, answered even when the
    request went to another region); None: boto3's own (``AWS_DEFAULT_REGION`` or the profile's;
    boto3 does not read ``AWS_REGION``)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from mlops_common import s3

    try:
        meta = s3.client(max_attempts=1).head_bucket(Bucket=bucket)["ResponseMetadata"]
    except ClientError as exc:
        meta = exc.response.get("ResponseMetadata") or {}
    except BotoCoreError:
        return None
    return (meta.get("HTTPHeaders") or {}).get("x-amz-bucket-region")
