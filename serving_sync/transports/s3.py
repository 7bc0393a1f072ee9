"""``s3://bucket/prefix`` hosts (TF Serving reading S3 directly) over boto3.

S3 has no rename, so ``atomic_rename`` is False: publish uploads every object except
``saved_model.pb`` under the final prefix, verifies, then uploads ``saved_model.pb`` last.

Integrity on the store's side: each PUT carries ``ChecksumSHA256`` (the manifest's hash); the
server recomputes it and rejects a mismatch (BadDigest), and ``HeadObject(ChecksumMode=ENABLED)``
returns it for verification (SeaweedFS 4.48 and AWS both do). A store that returns no checksum
is verified by reading the object back and hashing it. Objects are uploaded in parallel.

Files above ``MULTIPART_THRESHOLD`` (5 GiB, S3's single-PUT limit) go up in parts
(``_put_multipart``): ``part_size`` grows with the file so ``MAX_PARTS`` (10,000) parts cover
S3's largest object (5 TiB). One pass over the file (1 MiB reads) hashes each part and the whole
file, which must equal the manifest's; then each part is streamed from disk (memory stays
bounded) with its own ``ChecksumSHA256``, which the store recomputes (BadDigest on a mismatch).
The object's checksum is then COMPOSITE (``<sha256 of the parts' digests>-<parts>``, on AWS and
SeaweedFS alike; SHA-256 has no FULL_OBJECT type), not the manifest's whole-file hash, and its
ETag is no MD5: the upload puts both in the object's metadata at creation (``META_PARTS``,
``META_SHA256``), and ``listing`` takes the file's hash from there only when the store's own
composite equals ``META_PARTS`` (every part's bytes were checked by the store against digests
whose file hash is ``META_SHA256``); anything else is read back and hashed. A failed or
interrupted multipart upload is aborted (``AbortMultipartUpload``); ``abort_uploads`` lists and
aborts those a killed run left under a prefix (publish under the lock, ``remove_tree``, retention).

Exclusive create (the lock) uses a conditional PUT ``If-None-Match: *`` (412 when the key
exists), supported by AWS S3 since 2024 and by SeaweedFS; a store that ignores the header
cannot give mutual exclusion (documented limitation).

Endpoint: ``MLFLOW_S3_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL``; credentials: the ``AWS_*``
variables (boto3's default chain). Nothing secret is logged.
"""
from __future__ import annotations

import base64
import hashlib
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from mlops_common import log
from mlops_common.errors import UserError
from mlops_common.settings import mask_url_password

from ..errors import AuthFailed, HostPermissionDenied, HostUnreachable
from ..manifest import HostListing, Manifest
from ..parallel import settle
from ..progress import ProgressFn
from .base import MAX_SMALL_FILE, Transport, rel_path, whole_small_file

logger = log.get("sync.s3")

MAX_SINGLE_PUT = 5 * 1024 ** 3
MULTIPART_THRESHOLD = MAX_SINGLE_PUT    # files above it go up in parts (tests lower it)
MIN_PART_SIZE = 64 * 1024 ** 2          # S3: 5 MiB..5 GiB per part (the last may be smaller)
MAX_PARTS = 10_000
MAX_OBJECT = 5 * 1024 ** 4              # S3's largest object
META_SHA256 = "mlops-sha256"            # a multipart object's metadata: the file's SHA-256 and
META_PARTS = "mlops-parts-sha256"       # the COMPOSITE checksum its parts make (set at creation)
WORKERS = 8
READ_CHUNK = 1024 * 1024


def part_size(size: int) -> int:
    """Bytes per part for a file of ``size``: ``MIN_PART_SIZE``, or more (whole MiB) when
    ``MAX_PARTS`` parts of it would not hold the file (5 TiB: 525 MiB parts)."""
    mib = 1024 ** 2
    return max(MIN_PART_SIZE, -(-size // (MAX_PARTS * mib)) * mib)


class _Part:
    """A read-only window ``[offset, offset + length)`` of an open file, for one UploadPart body
    (botocore streams it, seeking back to retry; nothing is read into memory at once)."""

    def __init__(self, fh, offset: int, length: int):
        self._fh, self._start, self._len, self._pos = fh, offset, length, 0

    def read(self, n: int = -1) -> bytes:
        left = self._len - self._pos
        n = left if n is None or n < 0 else min(n, left)
        if n <= 0:
            return b""
        self._fh.seek(self._start + self._pos)
        data = self._fh.read(n)
        self._pos += len(data)
        return data

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._len}[whence]
        self._pos = max(0, min(self._len, base + pos))
        return self._pos

    def tell(self) -> int:
        return self._pos

    def __len__(self) -> int:
        return self._len


class _NotStarted(Exception):
    """An object not uploaded because another one failed or a stop was asked first."""


def _b64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def _hex(b64_digest: str) -> str:
    return base64.b64decode(b64_digest).hex()


class S3Transport(Transport):
    scheme = "s3"
    atomic_rename = False
    create_is_written = True      # a conditional PUT: never an empty lock file

    def __init__(self, bucket: str, prefix: str = "", *, client=None):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        super().__init__(f"s3://{bucket}/{self.prefix}".rstrip("/"))
        self._client = client

    # --- plumbing ------------------------------------------------------------------------
    @property
    def client(self):
        if self._client is None:
            from mlops_common import s3

            self._client = s3.client(read_timeout=120, max_attempts=4, max_pool_connections=WORKERS + 2,
                                     request_checksum_calculation="when_required",
                                     response_checksum_validation="when_required")
        return self._client

    def _key(self, rel: str) -> str:
        rel = rel_path(rel)
        return "/".join(p for p in (self.prefix, rel) if p)

    def _dir_prefix(self, rel: str) -> str:
        key = self._key(rel)
        return f"{key}/" if key else ""

    def _error(self, exc: Exception, doing: str) -> UserError:
        from mlops_common import s3 as s3_factory

        kind, code = s3_factory.classify(exc)
        if kind == s3_factory.NO_CREDENTIALS:
            return AuthFailed(f"{self.url}: no S3 credentials; set AWS_ACCESS_KEY_ID and "
                              f"AWS_SECRET_ACCESS_KEY (or an AWS profile)")
        if kind == s3_factory.UNREACHABLE:
            endpoint = mask_url_password(str(getattr(exc, "kwargs", {}).get("endpoint_url", "")))
            return HostUnreachable(f"{self.url}: cannot reach the S3 endpoint while {doing} "
                                   f"({endpoint}); check "
                                   f"MLFLOW_S3_ENDPOINT_URL / AWS_ENDPOINT_URL")
        if kind == s3_factory.BAD_CREDENTIALS:
            return AuthFailed(f"{self.url}: S3 rejected the credentials ({code}); check "
                              f"AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
        if kind == s3_factory.DENIED:
            return HostPermissionDenied(f"{self.url}: access denied while {doing}; the deploy "
                                        f"credentials need read/write on s3://{self.bucket}/{self.prefix}")
        if kind == s3_factory.NO_BUCKET:
            return UserError(f"{self.url}: bucket {self.bucket!r} does not exist; create it or fix "
                             f"the target")
        if kind == s3_factory.CHECKSUM:
            return UserError(f"{self.url}: the store rejected an upload whose checksum did not "
                             f"match while {doing}; the local file changed or was corrupted in "
                             f"transit; rerun")
        if code:
            msg = getattr(exc, "response", {}).get("Error", {}).get("Message", "")
            return UserError(f"{self.url}: S3 error {code} while {doing}: {msg}")
        if isinstance(exc, OSError):
            return HostUnreachable(f"{self.url}: connection problem while {doing} ({exc})")
        return UserError(f"{self.url}: {type(exc).__name__} while {doing}: {exc}")

    def _call(self, doing: str, fn, *a, **kw):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*a, **kw)
        except (ClientError, BotoCoreError, OSError) as exc:
            raise self._error(exc, doing) from None

    @staticmethod
    def _code(exc) -> str:
        return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))

    def _iter_keys(self, prefix: str):
        paginator = self.client.get_paginator("list_objects_v2")
        for page in self._call(f"listing {prefix}", lambda: list(paginator.paginate(
                Bucket=self.bucket, Prefix=prefix))):
            for obj in page.get("Contents", []):
                yield obj

    # --- reading -------------------------------------------------------------------------
    def _file_keys(self, prefix: str):
        """The objects under ``prefix`` that are files: a zero-byte key ending in ``/`` is a
        folder marker (the S3 console's "Create folder"), which TF Serving skips (an empty child
        name); taken for a file it failed the verification of a version that held one."""
        return (o for o in self._iter_keys(prefix) if not (o["Key"].endswith("/") and not o.get("Size")))

    def files_under(self, rel: str) -> list[str]:
        """Every file object under ``rel``, relative to it (one LIST per 1,000; nothing is read)."""
        prefix = self._dir_prefix(rel)
        return sorted(o["Key"][len(prefix):] for o in self._file_keys(prefix))

    def list_dir(self, rel: str = "") -> list[str]:
        prefix = self._dir_prefix(rel)
        paginator = self.client.get_paginator("list_objects_v2")
        names: set[str] = set()
        pages = self._call(f"listing {rel or '/'}", lambda: list(paginator.paginate(
            Bucket=self.bucket, Prefix=prefix, Delimiter="/")))
        for page in pages:
            for cp in page.get("CommonPrefixes", []):
                # Some stores (SeaweedFS) list emptied "directories": only count non-empty ones.
                if self._any_object(cp["Prefix"]):
                    names.add(cp["Prefix"][len(prefix):].rstrip("/"))
            for obj in page.get("Contents", []):
                names.add(obj["Key"][len(prefix):])
        return sorted(n for n in names if n and "/" not in n)

    def _any_object(self, prefix: str) -> bool:
        resp = self._call(f"listing {prefix}", self.client.list_objects_v2, Bucket=self.bucket,
                          Prefix=prefix, MaxKeys=1)
        return bool(resp.get("KeyCount") or resp.get("Contents"))

    def read_file(self, rel: str, max_bytes: int = MAX_SMALL_FILE) -> bytes:
        from botocore.exceptions import ClientError

        key = self._key(rel)
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if self._code(exc) in ("NoSuchKey", "404", "NotFound"):
                raise FileNotFoundError(key) from None
            raise self._error(exc, f"reading {rel}") from None
        except Exception as exc:  # noqa: BLE001 - translated
            raise self._error(exc, f"reading {rel}") from None
        return whole_small_file(obj["Body"].read(max_bytes + 1), max_bytes, self.url, rel)

    def _head(self, key: str, doing: str) -> dict | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        except ClientError as exc:
            if self._code(exc) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise self._error(exc, doing) from None
        except Exception as exc:  # noqa: BLE001 - translated
            raise self._error(exc, doing) from None

    def exists(self, rel: str) -> bool:
        key = self._key(rel)
        if key and self._head(key, f"checking {rel}") is not None:
            return True
        return self._any_object(self._dir_prefix(rel))

    def listing(self, rel: str) -> HostListing:
        """SHA-256 of every object under ``rel``, as the store computed it on upload."""
        prefix = self._dir_prefix(rel)
        keys = [o["Key"] for o in self._file_keys(prefix)]

        def digest(key: str) -> tuple[str, str]:
            head = self._head(key, f"verifying {key}")
            checksum = (head or {}).get("ChecksumSHA256")
            if checksum and "-" not in checksum:
                return key[len(prefix):], _hex(checksum)
            meta = (head or {}).get("Metadata") or {}
            if (checksum and meta.get(META_PARTS) == checksum
                    and re.fullmatch(r"[0-9a-f]{64}", meta.get(META_SHA256, ""))):
                return key[len(prefix):], meta[META_SHA256]   # our multipart upload, parts checked by the store
            return key[len(prefix):], self._read_back_sha256(key)

        with ThreadPoolExecutor(WORKERS) as pool:
            files = dict(pool.map(digest, keys))
        return HostListing(files, frozenset(), (), check_dirs=False)

    def _read_back_sha256(self, key: str) -> str:
        """For stores that keep no checksum: download and hash (slow but exact)."""
        obj = self._call(f"reading back {key}", self.client.get_object, Bucket=self.bucket, Key=key)
        h = hashlib.sha256()
        for chunk in iter(lambda: obj["Body"].read(READ_CHUNK), b""):
            h.update(chunk)
        return h.hexdigest()

    # --- writing -------------------------------------------------------------------------
    def write_file_atomic(self, rel: str, data: bytes) -> None:
        # A single PUT replaces an object atomically: readers get the old or the new body.
        self._call(f"writing {rel}", self.client.put_object, Bucket=self.bucket, Key=self._key(rel),
                   Body=data, ChecksumSHA256=_b64(hashlib.sha256(data).hexdigest()))

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(rel), Body=data, IfNoneMatch="*")
            return True
        except ClientError as exc:
            if self._code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            raise self._error(exc, f"creating {rel}") from None
        except Exception as exc:  # noqa: BLE001 - translated
            raise self._error(exc, f"creating {rel}") from None

    def remove_if_same(self, rel: str, expected: bytes) -> bool:
        # GET (body + ETag), compare, then DELETE If-Match: that ETag (412 if it changed since).
        # SeaweedFS 4.48 and AWS S3 honour If-Match on DeleteObject.
        from botocore.exceptions import ClientError

        key = self._key(rel)
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=key)
            body = obj["Body"].read(MAX_SMALL_FILE + 1)
            if body != expected:
                return False
            self.client.delete_object(Bucket=self.bucket, Key=key, IfMatch=obj["ETag"])
            return True
        except ClientError as exc:
            if self._code(exc) in ("NoSuchKey", "404", "NotFound", "PreconditionFailed", "412",
                                   "ConditionalRequestConflict"):
                return False
            raise self._error(exc, f"taking over {rel}") from None
        except Exception as exc:  # noqa: BLE001 - translated
            raise self._error(exc, f"taking over {rel}") from None

    def upload_tree(self, local_dir, dest_rel: str, manifest: Manifest,
                    progress: ProgressFn | None = None, *, min_free: int | None = None) -> int:
        prefix = self._dir_prefix(dest_rel)
        for f in manifest.files:
            if f.size > MAX_OBJECT:
                raise UserError(f"{self.url}: {f.path} is {f.size / 1e12:.1f} TB; S3 holds no object "
                                f"above 5 TiB")

        def put(entry) -> int:
            if entry.size > MULTIPART_THRESHOLD:
                return self._put_multipart(local_dir, prefix + entry.path, entry, progress)
            # The store recomputes SHA-256 and rejects the PUT (BadDigest) if it differs.
            with open(os.path.join(local_dir, entry.path), "rb") as fh:
                self._call(f"uploading {entry.path}", self.client.put_object, Bucket=self.bucket,
                           Key=prefix + entry.path, Body=fh, ContentLength=entry.size,
                           ChecksumSHA256=_b64(entry.sha256))
            if progress:
                progress(entry.size)   # per object: botocore may read a body twice (signing)
            return entry.size

        # After a failure, a cancel (raised by ``progress``) or a signal no new object starts, and
        # every started PUT returns before this does (the caller then cleans up and releases the
        # lock): ``pool.map`` saw a failure only in the files' order, so the other workers went on
        # uploading the rest meanwhile, and a worker a forced stop left wrote after the clean-up.
        stopping = threading.Event()

        def one(entry) -> int:
            if stopping.is_set():
                raise _NotStarted
            try:
                return put(entry)
            except BaseException:
                stopping.set()
                raise

        # Biggest first so the long uploads overlap the many small ones.
        ordered = sorted(manifest.files, key=lambda f: -f.size)
        outcomes = settle(one, ordered, workers=WORKERS, name="s3_upload", inline=False, on_signal=stopping.set)
        for _, exc in outcomes:
            if exc is not None and not isinstance(exc, _NotStarted):
                raise exc
        return sum(sent for sent, _ in outcomes)

    def _put_multipart(self, local_dir, key: str, entry, progress: ProgressFn | None) -> int:
        """Upload one big file in parts (see the module docstring); aborted on any failure."""
        size = part_size(entry.size)
        doing = f"uploading {entry.path}"
        path = os.path.join(local_dir, entry.path)
        digests, whole = [], hashlib.sha256()       # one pass: each part's SHA-256 and the file's
        with open(path, "rb") as fh:
            for offset in range(0, entry.size, size):
                body, h = _Part(fh, offset, min(size, entry.size - offset)), hashlib.sha256()
                for chunk in iter(lambda: body.read(READ_CHUNK), b""):
                    h.update(chunk)
                    whole.update(chunk)
                digests.append(h.digest())
        if whole.hexdigest() != entry.sha256:
            raise UserError(f"{self.url}: {entry.path} changed since it was hashed (its bytes no longer "
                            f"match the manifest); nothing was published, rerun")
        composite = f"{base64.b64encode(hashlib.sha256(b''.join(digests)).digest()).decode()}-{len(digests)}"
        # what the store's COMPOSITE checksum must be, and the file's hash it then stands for
        up = self._call(doing, self.client.create_multipart_upload, Bucket=self.bucket, Key=key,
                        ChecksumAlgorithm="SHA256",
                        Metadata={META_SHA256: entry.sha256, META_PARTS: composite})
        upload_id, parts = up["UploadId"], []
        try:
            with open(path, "rb") as fh:
                for number, digest in enumerate(digests, 1):
                    offset = (number - 1) * size
                    length = min(size, entry.size - offset)
                    checksum = base64.b64encode(digest).decode()
                    # the store recomputes the part's SHA-256 and refuses it (BadDigest) if it differs:
                    # bytes changed since the pass above, or damaged on the way
                    r = self._call(doing, self.client.upload_part, Bucket=self.bucket, Key=key,
                                   UploadId=upload_id, PartNumber=number, Body=_Part(fh, offset, length),
                                   ContentLength=length, ChecksumSHA256=checksum)
                    parts.append({"PartNumber": number, "ETag": r["ETag"], "ChecksumSHA256": checksum})
                    if progress:
                        progress(length)     # per part: a cancel stops the upload between parts
            self._call(doing, self.client.complete_multipart_upload, Bucket=self.bucket, Key=key,
                       UploadId=upload_id, MultipartUpload={"Parts": parts})
        except BaseException:
            self._abort(key, upload_id)
            raise
        logger.debug("%s: %s uploaded in %d parts", self.url, entry.path, len(parts))
        return entry.size

    def _abort(self, key: str, upload_id: str) -> bool:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            return True
        except Exception as exc:  # noqa: BLE001 - best effort: abort_uploads (clean-up) tries again
            if self._code(exc) in ("NoSuchUpload", "404"):
                return True
            logger.warning("%s: could not abort the multipart upload of %s (%s); the next clean-up of "
                           "its version aborts it", self.url, key, type(exc).__name__)
            return False

    def abort_uploads(self, rel: str, *, older_than: float | None = None, now: float | None = None) -> int:
        """Abort every multipart upload in progress under ``rel`` (a killed run's, billed as
        storage but invisible to a LIST of objects), or only those started ``older_than`` seconds
        before ``now``; the caller holds the lock. Returns how many."""
        from botocore.exceptions import BotoCoreError, ClientError

        from mlops_common import s3 as s3_factory

        prefix = self._dir_prefix(rel)
        paginator = self.client.get_paginator("list_multipart_uploads")
        try:
            pages = list(paginator.paginate(Bucket=self.bucket, Prefix=prefix))
        except (ClientError, BotoCoreError, OSError) as exc:
            if s3_factory.classify(exc)[0] != s3_factory.DENIED:
                raise self._error(exc, f"listing the unfinished uploads under {rel}") from None
            # credentials without s3:ListBucketMultipartUploads: nothing else needs it
            logger.warning("%s: may not list unfinished multipart uploads under %s (AccessDenied); a killed "
                           "upload's parts stay billed until a bucket lifecycle rule "
                           "(AbortIncompleteMultipartUpload) removes them", self.url, rel)
            return 0
        now = time.time() if now is None else now
        uploads = [(u["Key"], u["UploadId"]) for page in pages for u in page.get("Uploads", [])
                   if u["Key"].startswith(prefix)
                   and (older_than is None or "Initiated" not in u
                        or now - u["Initiated"].timestamp() > older_than)]
        for key, upload_id in uploads:
            logger.info("%s: aborting an unfinished multipart upload of %s", self.url, key)
            self._call(f"aborting the unfinished upload of {key}", self.client.abort_multipart_upload,
                       Bucket=self.bucket, Key=key, UploadId=upload_id)
        return len(uploads)

    def rename(self, src_rel: str, dst_rel: str) -> None:
        raise NotImplementedError("S3 has no rename; publish uploads saved_model.pb last instead")

    def remove_tree(self, rel: str) -> None:
        if not rel_path(rel):
            raise ValueError("refusing to remove the base prefix")
        prefix = self._dir_prefix(rel)
        self.abort_uploads(rel)      # a killed upload's parts: invisible to the LIST below, still billed
        keys = [o["Key"] for o in self._iter_keys(prefix)]
        # The loadable marker goes first (its own request) so a half-removed version never loads.
        markers = [k for k in keys if k.rsplit("/", 1)[-1] in ("saved_model.pb", "saved_model.pbtxt")]
        for k in markers:
            self._call(f"removing {rel}", self.client.delete_object, Bucket=self.bucket, Key=k)
        rest = [k for k in keys if k not in markers]
        for i in range(0, len(rest), 1000):
            batch = [{"Key": k} for k in rest[i:i + 1000]]
            resp = self._call(f"removing {rel}", self.client.delete_objects, Bucket=self.bucket,
                              Delete={"Objects": batch, "Quiet": True})
            errors = resp.get("Errors") or []
            if errors:
                raise UserError(f"{self.url}: could not delete {errors[0].get('Key')}: "
                                f"{errors[0].get('Code')} {errors[0].get('Message', '')}")
        # Stores with real directories (SeaweedFS) keep emptied ones listed: remove them,
        # deepest first (a no-op on AWS S3, which has no directories).
        dirs = {prefix}
        for k in keys:
            parts = k[len(prefix):].split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add(prefix + "/".join(parts[:i]) + "/")
        for d in sorted(dirs, key=lambda d: -d.count("/")):
            try:
                self.client.delete_object(Bucket=self.bucket, Key=d)
            except Exception:  # noqa: BLE001 - best effort: only cosmetic on such stores
                pass

    def remove_file(self, rel: str) -> None:
        self._call(f"removing {rel}", self.client.delete_object, Bucket=self.bucket, Key=self._key(rel))
