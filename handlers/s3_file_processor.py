"""S3 file processor (job type `file-processor`): an uploaded object's lines, in batches,
across as many invocations as it takes.

Triggers: an S3 event notification delivered directly, through SQS (the template's
IngestQueue; the message body is the S3 notification), through SNS, or SNS inside SQS,
or an EventBridge "Object Created" event. Each object *version* becomes one job with a
deterministic id, so a duplicate notification starts nothing new. jobstate step events
(`{"jobstate": ...}`) go to `app.handler`.

The step:
- loads the object through a `/tmp` cache that survives warm invocations, revalidated
  with `GetObject(IfNoneMatch=<cached ETag>)` (304: use the cache, no body downloaded);
- pins the object's ETag in the cursor at step 0; a later step that sees another ETag
  (or whose `IfMatch` fails) fails the job instead of mixing two versions of the file;
- processes `BATCH_LINES` lines per batch while `ctx.has_time()`, writing one result
  object `results/<job_id>/<offset>.json` per batch with `ctx.once` (at-least-once is
  right here: re-putting the same key with the same content is harmless);
- commits the line offset, so the next invocation resumes there.

Per-line work is pluggable: `build_app(process_lines=fn)` where `fn(lines) -> JSON`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

from botocore.exceptions import ClientError

import jobstate
from handlers import NoTimeForABatch
from jobstate import observe

JOB_TYPE = "file-processor"
DEFAULT_BATCH_LINES = 500
DEFAULT_CACHE_DIR = os.path.join(tempfile.gettempdir(), "jobstate-s3-cache")
DEFAULT_CACHE_BYTES = 256 * 1024 * 1024


ProcessLines = Callable[[list[str]], Any]


def count_words(lines: list[str]) -> dict[str, Any]:
    """The default per-batch work: line, word and character counts."""
    return {"lines": len(lines), "words": sum(len(ln.split()) for ln in lines),
            "chars": sum(len(ln) for ln in lines)}


@functools.cache
def default_s3() -> Any:
    import boto3  # lazily: nothing connects at import time

    return boto3.client("s3")


def _etag(value: str | None) -> str:
    return (value or "").strip('"')


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


# -- the /tmp cache ---------------------------------------------------------------------


class ObjectReplaced(Exception):
    """The object in S3 is no longer the version this job pinned."""

    def __init__(self, pinned: str, current: str) -> None:
        super().__init__(f"etag {pinned} → {current}")
        self.pinned = pinned
        self.current = current


@dataclass
class CacheStats:
    downloads: int = 0
    revalidated: int = 0  # 304 Not Modified: served from /tmp


class ObjectCache:
    """Object bodies in /tmp keyed by bucket/key(/version), revalidated by ETag.

    Lambda may keep /tmp across warm invocations of one execution environment, or not:
    a miss simply downloads again. Files are written atomically (several local workers
    may share one /tmp) and the least recently used are removed past `max_bytes`.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None,
                 max_bytes: int | None = None) -> None:
        self.directory = Path(directory or os.environ.get("JOBSTATE_CACHE_DIR")
                              or DEFAULT_CACHE_DIR)
        self.max_bytes = max_bytes or int(os.environ.get("JOBSTATE_CACHE_BYTES",
                                                         DEFAULT_CACHE_BYTES))
        self.stats = CacheStats()

    def _paths(self, bucket: str, key: str, version_id: str | None) -> tuple[Path, Path]:
        name = hashlib.sha256(f"{bucket}\x1f{key}\x1f{version_id or ''}".encode()).hexdigest()
        return self.directory / f"{name}.body", self.directory / f"{name}.json"

    def _cached(self, bucket: str, key: str, version_id: str | None) -> str | None:
        body, meta = self._paths(bucket, key, version_id)
        try:
            etag = json.loads(meta.read_text(encoding="utf-8"))["etag"]
        except (OSError, ValueError, KeyError):
            return None
        return str(etag) if body.exists() else None

    def _store(self, bucket: str, key: str, version_id: str | None, data: bytes,
               etag: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        body, meta = self._paths(bucket, key, version_id)
        for path, content in ((body, data), (meta, json.dumps({"etag": etag}).encode())):
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
            with os.fdopen(fd, "wb") as fh:
                fh.write(content)
            os.replace(tmp, path)
        self._prune(keep=body)

    def _prune(self, keep: Path) -> None:
        bodies = sorted(self.directory.glob("*.body"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in bodies)
        for path in bodies:
            if total <= self.max_bytes or path == keep:
                continue
            total -= path.stat().st_size
            path.unlink(missing_ok=True)
            path.with_suffix(".json").unlink(missing_ok=True)

    def evict(self, bucket: str, key: str, version_id: str | None = None) -> None:
        for path in self._paths(bucket, key, version_id):
            path.unlink(missing_ok=True)

    def load(self, s3: Any, bucket: str, key: str, *, pinned: str | None,
             version_id: str | None = None) -> tuple[bytes, str]:
        """The object's bytes and ETag; raises ObjectReplaced if it is not `pinned`."""
        kw: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if version_id:
            kw["VersionId"] = version_id
        cached = self._cached(bucket, key, version_id)
        if cached is not None:
            try:
                resp = s3.get_object(**kw, IfNoneMatch=f'"{cached}"')
            except ClientError as exc:
                if _status(exc) != 304:
                    raise
                self.stats.revalidated += 1
                if pinned and cached != pinned:
                    raise ObjectReplaced(pinned, cached) from None
                body_path, _ = self._paths(bucket, key, version_id)
                os.utime(body_path)  # recently used
                return body_path.read_bytes(), cached
        else:
            if pinned:
                kw["IfMatch"] = f'"{pinned}"'
            try:
                resp = s3.get_object(**kw)
            except ClientError as exc:
                if _status(exc) != 412:
                    raise
                head = s3.head_object(Bucket=bucket, Key=key)
                raise ObjectReplaced(pinned or "", _etag(head.get("ETag"))) from None
        data: bytes = resp["Body"].read()
        etag = _etag(resp.get("ETag"))
        self.stats.downloads += 1
        self._store(bucket, key, version_id, data, etag)
        if pinned and etag != pinned:
            raise ObjectReplaced(pinned, etag)
        return data, etag


# -- notifications -> jobs -------------------------------------------------------------


@dataclass(frozen=True)
class ObjectVersion:
    bucket: str
    key: str
    version_id: str | None
    etag: str | None
    size: int | None

    @property
    def job_id(self) -> str:
        return jobstate.stable_id(self.bucket, self.key, self.version_id or self.etag,
                                  prefix="file")

    def to_input(self) -> dict[str, Any]:
        return {"bucket": self.bucket, "key": self.key, "version_id": self.version_id,
                "etag": self.etag, "size": self.size}


def _from_s3_record(rec: Mapping[str, Any]) -> ObjectVersion | None:
    if not str(rec.get("eventName", "")).startswith("ObjectCreated"):
        return None
    s3 = rec["s3"]
    obj = s3["object"]
    return ObjectVersion(s3["bucket"]["name"], unquote_plus(obj["key"]),
                         obj.get("versionId") or None, _etag(obj.get("eTag")) or None,
                         obj.get("size"))


def _from_body(body: Any) -> Iterator[ObjectVersion]:
    """An S3 notification, possibly inside an SNS envelope (SNS -> SQS)."""
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            observe.event("ignored_message", logging.WARNING, detail="body is not JSON")
            return
    if not isinstance(body, Mapping):
        return
    if body.get("Type") == "Notification" and "Message" in body:
        yield from _from_body(body["Message"])
        return
    if body.get("Event") == "s3:TestEvent":
        return
    if isinstance(body.get("Records"), list):
        for rec in body["Records"]:
            if isinstance(rec, Mapping) and rec.get("eventSource") == "aws:s3":
                ov = _from_s3_record(rec)
                if ov is not None:
                    yield ov
        return
    if body.get("source") == "aws.s3" and body.get("detail-type") == "Object Created":
        d = body["detail"]
        yield ObjectVersion(d["bucket"]["name"], d["object"]["key"],
                            d["object"].get("version-id") or None,
                            _etag(d["object"].get("etag")) or None, d["object"].get("size"))
        return
    observe.event("ignored_message", logging.WARNING,
                  detail=f"not an S3 notification (keys {sorted(body)[:5]})")


def object_versions(event: Any) -> list[ObjectVersion]:
    """Every created object version named by an S3/SQS/SNS/EventBridge event."""
    if not isinstance(event, Mapping):
        raise jobstate.InvalidEvent(f"expected an S3, SQS, SNS or jobstate event, got "
                                    f"{type(event).__name__}")
    if event.get("source") == "aws.s3":
        return list(_from_body(event))
    records = event.get("Records")
    if not isinstance(records, list):
        raise jobstate.InvalidEvent(
            f"expected an S3, SQS, SNS or jobstate event (got keys {sorted(event)[:5]})")
    out: list[ObjectVersion] = []
    for rec in records:
        if not isinstance(rec, Mapping):
            continue
        source = rec.get("eventSource") or rec.get("EventSource")
        if source == "aws:s3":
            ov = _from_s3_record(rec)
            if ov is not None:
                out.append(ov)
        elif source == "aws:sqs":
            out.extend(_from_body(rec.get("body")))
        elif source == "aws:sns":
            out.extend(_from_body(rec.get("Sns", {}).get("Message")))
    return out


# -- the app ----------------------------------------------------------------------------


class FileProcessor:
    """The `file-processor` App and its Lambda handler; every dependency is injectable.

    Defaults come from the environment: `RESULTS_BUCKET` (default: the source bucket),
    `RESULTS_PREFIX` (default `results/`), `BATCH_LINES` (default 500),
    `JOBSTATE_CACHE_DIR`, `JOBSTATE_CACHE_BYTES`.
    """

    def __init__(
        self,
        store: jobstate.JobStore | None = None,
        continuation: jobstate.Continuation | None = None,
        *,
        s3: Any = None,
        process_lines: ProcessLines = count_words,
        cache: ObjectCache | None = None,
        results_bucket: str | None = None,
        results_prefix: str | None = None,
        batch_lines: int | None = None,
        **app_options: Any,
    ) -> None:
        self.app = jobstate.App(store or jobstate.JobStore(), continuation, **app_options)
        self._s3 = s3
        self.process_lines = process_lines
        self.cache = cache or ObjectCache()
        self.results_bucket = results_bucket or os.environ.get("RESULTS_BUCKET") or None
        self.results_prefix = results_prefix or os.environ.get("RESULTS_PREFIX", "results/")
        self.batch_lines = batch_lines or int(os.environ.get("BATCH_LINES",
                                                             DEFAULT_BATCH_LINES))
        self.app.job(JOB_TYPE, max_steps=10_000, deadline=24 * 3600)(self.step)

    @property
    def s3(self) -> Any:
        return self._s3 or default_s3()

    def step(self, ctx: jobstate.StepContext) -> Any:
        bucket, key = ctx.input["bucket"], ctx.input["key"]
        version_id = ctx.input.get("version_id")
        pinned = ctx.cursor.get("etag") or ctx.input.get("etag")
        try:
            data, etag = self.cache.load(self.s3, bucket, key, pinned=pinned,
                                         version_id=version_id)
        except ObjectReplaced as exc:
            return ctx.fail(
                f"s3://{bucket}/{key}: object was replaced mid-job (etag {exc.pinned} → "
                f"{exc.current}); re-upload triggers a new job"
            )
        except ClientError as exc:
            if _status(exc) == 404:
                return ctx.fail(f"s3://{bucket}/{key} was deleted before the job finished")
            raise
        ctx.cursor["etag"] = etag  # pinned from step 0 on
        lines = data.decode("utf-8", errors="replace").splitlines()
        total = len(lines)
        out_bucket = self.results_bucket or bucket
        offset = int(ctx.cursor.get("offset", 0))

        def write_batch(out_key: str, first: int, batch: list[str]) -> dict[str, Any]:
            body = {"job_id": ctx.job_id, "source": f"s3://{bucket}/{key}", "etag": etag,
                    "offset": first, "count": len(batch), "result": self.process_lines(batch)}
            self.s3.put_object(Bucket=out_bucket, Key=out_key, Body=json.dumps(body).encode(),
                               ContentType="application/json")
            return {"key": out_key, "lines": len(batch)}

        first = offset
        while offset < total and ctx.has_time():
            batch = lines[offset:offset + self.batch_lines]
            out_key = f"{self.results_prefix}{ctx.job_id}/{offset}.json"
            # At-least-once: a re-run after a crash re-puts the same key and content.
            ctx.once(f"batch-{offset}", write_batch, out_key, offset, batch,
                     semantics=jobstate.Semantics.AT_LEAST_ONCE)
            offset += len(batch)
            ctx.cursor["offset"] = offset
            ctx.progress(offset, total, "lines")
        if offset == first < total:
            raise NoTimeForABatch(ctx.remaining_ms())
        if offset < total:
            return None  # commit the offset; the next invocation continues from it
        self.cache.evict(bucket, key, version_id)
        return ctx.complete({
            "source": f"s3://{bucket}/{key}", "etag": etag, "lines": total,
            "batches": -(-total // self.batch_lines),
            "results": f"s3://{out_bucket}/{self.results_prefix}{ctx.job_id}/",
        })

    def handler(self, event: Any, context: Any = None) -> dict[str, Any]:
        """Lambda entry point: jobstate events run a step; S3 notifications start jobs.

        Starting is idempotent (deterministic job ids), so if one start fails the error
        fails the whole SQS batch, and the redelivered batch starts nothing twice.
        """
        if isinstance(event, Mapping) and "jobstate" in event:
            return self.app.handler(event, context)
        started: list[str] = []
        skipped: list[str] = []
        for ov in object_versions(event):
            if ov.key.startswith(self.results_prefix) and self.results_bucket in (None,
                                                                                  ov.bucket):
                skipped.append(ov.key)  # our own output: never process it (no S3 loop)
                continue
            try:
                started.append(self.app.start(JOB_TYPE, ov.to_input(), job_id=ov.job_id,
                                              context=context))
            except jobstate.JobConflict as exc:
                observe.event("ignored_message", logging.WARNING, job_id=ov.job_id,
                              detail=str(exc))
        return {"started": started, "skipped": skipped}


processor = FileProcessor()
app = processor.app
handler = processor.handler
