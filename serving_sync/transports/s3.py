"""``s3://bucket/prefix`` hosts (TF Serving reading S3 directly) over boto3.

S3 has no rename, so ``atomic_rename`` is False: publish uploads every object except
``saved_model.pb`` under the final prefix, verifies, then uploads ``saved_model.pb`` last.

Integrity on the store's side: each PUT carries ``ChecksumSHA256`` (the manifest's hash); the
server recomputes it and rejects a mismatch (BadDigest), and ``HeadObject(ChecksumMode=ENABLED)``
returns it for verification (SeaweedFS 4.48 and AWS both do). A store that returns no checksum
is verified by reading the object back and hashing it. Objects are single-part PUTs (up to
5 GiB each), uploaded in parallel.

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
from concurrent.futures import ThreadPoolExecutor

from mlops_common import log
from mlops_common.errors import UserError
from mlops_common.settings import mask_url_password

from ..errors import AuthFailed, HostPermissionDenied, HostUnreachable
from ..manifest import HostListing, Manifest
from ..progress import ProgressFn
from .base import MAX_SMALL_FILE, Transport, rel_path, whole_small_file

logger = log.get("sync.s3")

MAX_SINGLE_PUT = 5 * 1024 ** 3
WORKERS = 8
READ_CHUNK = 1024 * 1024


def _b64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def _hex(b64_digest: str) -> str:
    return base64.b64decode(b64_digest).hex()


class S3Transport(Transport):
    scheme = "s3"
    atomic_rename = False

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
            if head and head.get("ChecksumSHA256") and "-" not in head["ChecksumSHA256"]:
                return key[len(prefix):], _hex(head["ChecksumSHA256"])
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
            if f.size > MAX_SINGLE_PUT:
                raise UserError(f"{self.url}: {f.path} is {f.size / 1e9:.1f} GB; single objects above "
                                f"5 GiB are not supported by the S3 transport")

        def put(entry) -> int:
            # The store recomputes SHA-256 and rejects the PUT (BadDigest) if it differs.
            with open(os.path.join(local_dir, entry.path), "rb") as fh:
                self._call(f"uploading {entry.path}", self.client.put_object, Bucket=self.bucket,
                           Key=prefix + entry.path, Body=fh, ContentLength=entry.size,
                           ChecksumSHA256=_b64(entry.sha256))
            if progress:
                progress(entry.size)   # per object: botocore may read a body twice (signing)
            return entry.size

        # Biggest first so the long uploads overlap the many small ones.
        ordered = sorted(manifest.files, key=lambda f: -f.size)
        with ThreadPoolExecutor(WORKERS) as pool:
            return sum(pool.map(put, ordered))

    def rename(self, src_rel: str, dst_rel: str) -> None:
        raise NotImplementedError("S3 has no rename; publish uploads saved_model.pb last instead")

    def remove_tree(self, rel: str) -> None:
        if not rel_path(rel):
            raise ValueError("refusing to remove the base prefix")
        prefix = self._dir_prefix(rel)
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
