"""handlers.s3_file_processor on moto S3 + DynamoDB, driven with chaos.

The independent sink is S3 itself: one result object per batch, whose line counts must
add up to the file's, whatever was duplicated, crashed or lost on the way.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aws_sinks import LambdaSink
from iam_coverage import covers

import jobstate
from handlers import s3_file_processor as fp
from jobstate.testing import Driver, FakeLambdaContext

# The template must allow every AWS call this handler makes (tests/iam_coverage.py).
# (s3:ListBucket is needed though no request shows it: iam_coverage.NEEDED_ANYWAY says why.)
iam = covers("FileProcessorFunction")

BUCKET = "uploads"


@pytest.fixture
def s3(jobstate_store: jobstate.JobStore) -> Any:  # jobstate_store keeps mock_aws active
    client = boto3.client("s3", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    return client


class GetLog:
    """GetObject calls by HTTP status, counted by a botocore event hook."""

    def __init__(self, client: Any) -> None:
        self.statuses: list[int] = []
        client.meta.events.register("after-call.s3.GetObject", self._on)

    def _on(self, http_response: Any, **_: Any) -> None:
        self.statuses.append(http_response.status_code)


def slow_work(clock: jobstate.ManualClock, seconds: float = 4.0) -> fp.ProcessLines:
    """Per-batch work that takes `seconds` of (manual) time, so jobs span several steps."""

    def work(lines: list[str]) -> dict[str, Any]:
        clock.advance(seconds)
        return fp.count_words(lines)

    return work


def make_processor(store: jobstate.JobStore, cont: jobstate.InMemoryContinuation,
                   s3: Any, clock: jobstate.ManualClock, tmp: Path,
                   **kw: Any) -> fp.FileProcessor:
    kw.setdefault("process_lines", slow_work(clock))
    return fp.FileProcessor(store, cont, s3=s3, cache=fp.ObjectCache(tmp / "cache"),
                            batch_lines=100, **kw)


def upload(s3: Any, key: str, n_lines: int, tag: str = "line") -> str:
    body = "".join(f"{tag} {i} alpha beta\n" for i in range(n_lines)).encode()
    return str(s3.put_object(Bucket=BUCKET, Key=key, Body=body)["ETag"]).strip('"')


def s3_record(key: str, etag: str, *, version: str | None = None,
              name: str = "ObjectCreated:Put") -> dict[str, Any]:
    obj: dict[str, Any] = {"key": key, "size": 1, "eTag": etag, "sequencer": "00A"}
    if version:
        obj["versionId"] = version
    return {"eventSource": "aws:s3", "eventName": name,
            "s3": {"bucket": {"name": BUCKET}, "object": obj}}


def sqs_event(*bodies: Any) -> dict[str, Any]:
    return {"Records": [{"eventSource": "aws:sqs", "messageId": str(i),
                         "body": b if isinstance(b, str) else json.dumps(b)}
                        for i, b in enumerate(bodies)]}


def result_objects(s3: Any, job_id: str) -> dict[int, dict[str, Any]]:
    out = {}
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET,
                                                         Prefix=f"results/{job_id}/")
    for page in pages:
        for obj in page.get("Contents", []):
            body = json.loads(s3.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read())
            out[body["offset"]] = body
    return out


def assert_exact(s3: Any, job_id: str, n_lines: int) -> None:
    objs = result_objects(s3, job_id)
    assert sorted(objs) == list(range(0, n_lines, 100))
    assert sum(o["count"] for o in objs.values()) == n_lines
    assert sum(o["result"]["lines"] for o in objs.values()) == n_lines
    assert all(o["result"]["words"] == 4 * o["count"] for o in objs.values())


# -- the scenario -------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_file_processed_exactly_under_chaos(
    jobstate_store: jobstate.JobStore, jobstate_continuation: jobstate.InMemoryContinuation,
    jobstate_clock: jobstate.ManualClock, s3: Any, tmp_path: Path, seed: int,
) -> None:
    proc = make_processor(jobstate_store, jobstate_continuation, s3, jobstate_clock, tmp_path,
                          process_lines=slow_work(jobstate_clock, 10.0))
    etag = upload(s3, "in/big.txt", 3000)
    out = proc.handler(sqs_event({"Records": [s3_record("in/big.txt", etag)]}))
    [job_id] = out["started"]
    assert job_id == jobstate.stable_id(BUCKET, "in/big.txt", etag, prefix="file")
    driver = Driver(proc.app, jobstate_continuation, jobstate_clock, seed=seed,
                    duplicates=0.3, crashes=0.2, lost=0.1)
    driver.run_until_done([job_id], calm_after=30)
    job = jobstate_store.get(job_id)
    assert job.status is jobstate.JobStatus.SUCCEEDED, job.error
    assert job.result["lines"] == 3000 and job.result["batches"] == 30
    assert job.step >= 6  # 30 batches of 10 s need 6+ invocations of 60 s
    assert driver.stats.crashes + driver.stats.duplicates + driver.stats.lost > 0
    assert_exact(s3, job_id, 3000)


def test_duplicate_notifications_start_one_job(
    jobstate_store: jobstate.JobStore, jobstate_continuation: jobstate.InMemoryContinuation,
    jobstate_clock: jobstate.ManualClock, s3: Any, tmp_path: Path,
) -> None:
    proc = make_processor(jobstate_store, jobstate_continuation, s3, jobstate_clock, tmp_path)
    etag = upload(s3, "in/a.txt", 250)
    note = {"Records": [s3_record("in/a.txt", etag)]}
    # The same notification twice in one SQS batch, once more via SNS, once directly.
    sns = {"Type": "Notification", "Message": json.dumps(note)}
    first = proc.handler(sqs_event(note, note, sns))
    again = proc.handler(note)
    ids = set(first["started"]) | set(again["started"])
    assert len(ids) == 1
    [job_id] = ids
    Driver(proc.app, jobstate_continuation, jobstate_clock, seed=5,
           duplicates=0.5).run_until_done()
    assert jobstate_store.get(job_id).status is jobstate.JobStatus.SUCCEEDED
    assert [j.job_id for j in jobstate_store.iter_jobs()] == [job_id]
    assert_exact(s3, job_id, 250)
    # A late duplicate after completion dispatches nothing at all.
    assert proc.handler(sqs_event(note))["started"] == [job_id]
    assert jobstate_continuation.events == []


def test_new_version_is_a_new_job(
    jobstate_store: jobstate.JobStore, jobstate_continuation: jobstate.InMemoryContinuation,
    jobstate_clock: jobstate.ManualClock, s3: Any, tmp_path: Path,
) -> None:
    proc = make_processor(jobstate_store, jobstate_continuation, s3, jobstate_clock, tmp_path)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    r1 = s3.put_object(Bucket=BUCKET, Key="in/v.txt", Body=b"a\nb\n")
    r2 = s3.put_object(Bucket=BUCKET, Key="in/v.txt", Body=b"c\nd\ne\n")
    ids = proc.handler({"Records": [
        s3_record("in/v.txt", r1["ETag"].strip('"'), version=r1["VersionId"]),
        s3_record("in/v.txt", r2["ETag"].strip('"'), version=r2["VersionId"]),
    ]})["started"]
    assert len(set(ids)) == 2
    Driver(proc.app, jobstate_continuation, jobstate_clock).run_until_done()
    # Each job read its own version (GetObject by VersionId), not the latest object.
    assert [jobstate_store.get(i).result["lines"] for i in ids] == [2, 3]


@pytest.mark.parametrize("warm", [True, False])
def test_replaced_object_fails_the_job(
    jobstate_store: jobstate.JobStore, jobstate_continuation: jobstate.InMemoryContinuation,
    jobstate_clock: jobstate.ManualClock, s3: Any, tmp_path: Path, warm: bool,
) -> None:
    proc = make_processor(jobstate_store, jobstate_continuation, s3, jobstate_clock, tmp_path)
    old = upload(s3, "in/r.txt", 3000)
    [job_id] = proc.handler({"Records": [s3_record("in/r.txt", old)]})["started"]
    driver = Driver(proc.app, jobstate_continuation, jobstate_clock)
    driver.step()  # step 0: pins the ETag, processes part of the file
    job = jobstate_store.get(job_id)
    assert job.status is jobstate.JobStatus.RUNNING and 0 < job.cursor["offset"] < 3000
    assert job.cursor["etag"] == old
    new = upload(s3, "in/r.txt", 3000, tag="other")
    if not warm:  # a cold container: no /tmp cache, so the step uses IfMatch (412)
        proc.cache = fp.ObjectCache(tmp_path / "cold")
    driver.run_until_done([job_id])
    job = jobstate_store.get(job_id)
    assert job.status is jobstate.JobStatus.FAILED
    assert job.error == (f"s3://{BUCKET}/in/r.txt: object was replaced mid-job (etag {old} "
                         f"→ {new}); re-upload triggers a new job")
    # Nothing of the new version was mixed into the old job's results.
    assert all(o["etag"] == old for o in result_objects(s3, job_id).values())


def test_object_replaced_before_the_first_step(
    jobstate_store: jobstate.JobStore, jobstate_continuation: jobstate.InMemoryContinuation,
    jobstate_clock: jobstate.ManualClock, s3: Any, tmp_path: Path,
) -> None:
    proc = make_processor(jobstate_store, jobstate_continuation, s3, jobstate_clock, tmp_path)
    old = upload(s3, "in/early.txt", 10)
    [job_id] = proc.handler({"Records": [s3_record("in/early.txt", old)]})["started"]
    upload(s3, "in/early.txt", 20, tag="newer")
    Driver(proc.app, jobstate_continuation, jobstate_clock).run_until_done()
    job = jobstate_store.get(job_id)
    assert job.status is jobstate.JobStatus.FAILED and "replaced mid-job" in (job.error or "")
    assert result_objects(s3, job_id) == {}


def test_tmp_cache_is_revalidated_with_if_none_match(
    jobstate_store: jobstate.JobStore, jobstate_continuation: jobstate.InMemoryContinuation,
    jobstate_clock: jobstate.ManualClock, s3: Any, tmp_path: Path,
) -> None:
    proc = make_processor(jobstate_store, jobstate_continuation, s3, jobstate_clock, tmp_path)
    gets = GetLog(s3)
    etag = upload(s3, "in/c.txt", 8000)
    [job_id] = proc.handler({"Records": [s3_record("in/c.txt", etag)]})["started"]
    driver = Driver(proc.app, jobstate_continuation, jobstate_clock)
    for _ in range(3):
        assert driver.step()
    # Step 0 downloaded (200); steps 1 and 2 revalidated the /tmp copy (304, no body).
    assert gets.statuses == [200, 304, 304]
    assert proc.cache.stats.downloads == 1 and proc.cache.stats.revalidated == 2
    # A new execution environment (empty /tmp) downloads again, pinned with IfMatch.
    proc.cache = fp.ObjectCache(tmp_path / "fresh")
    driver.run_until_done([job_id])
    assert gets.statuses[3] == 200 and set(gets.statuses[4:]) == {304}
    assert jobstate_store.get(job_id).status is jobstate.JobStatus.SUCCEEDED
    assert_exact(s3, job_id, 8000)
    assert not list((tmp_path / "fresh").glob("*.body"))  # evicted when the job finished


def test_cache_prunes_least_recently_used(tmp_path: Path, s3: Any) -> None:
    cache = fp.ObjectCache(tmp_path, max_bytes=25)
    for name in ("a", "b", "c"):
        s3.put_object(Bucket=BUCKET, Key=name, Body=b"x" * 10)
        cache.load(s3, BUCKET, name, pinned=None)
    assert sorted(p.name for p in tmp_path.glob("*.body")) == sorted(
        cache._paths(BUCKET, k, None)[0].name for k in ("b", "c"))


# -- event parsing ------------------------------------------------------------------------


def test_event_shapes(
    jobstate_store: jobstate.JobStore, jobstate_continuation: jobstate.InMemoryContinuation,
    jobstate_clock: jobstate.ManualClock, s3: Any, tmp_path: Path,
) -> None:
    proc = make_processor(jobstate_store, jobstate_continuation, s3, jobstate_clock, tmp_path)
    out = proc.handler(sqs_event(
        {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": BUCKET},
        {"Records": [s3_record("in/my+file%C3%A9.txt", "e1"),
                     s3_record("in/gone.txt", "e2", name="ObjectRemoved:Delete"),
                     s3_record("results/x/0.json", "e3")]},
        "not json",
    ))
    assert len(out["started"]) == 1 and out["skipped"] == ["results/x/0.json"]
    job = jobstate_store.get(out["started"][0])
    assert job.input["key"] == "in/my fileé.txt"  # S3 URL-encodes keys in notifications
    eb = {"source": "aws.s3", "detail-type": "Object Created",
          "detail": {"bucket": {"name": BUCKET},
                     "object": {"key": "in/eb.txt", "etag": "e4", "size": 3}}}
    assert proc.handler(eb)["started"] == [jobstate.stable_id(BUCKET, "in/eb.txt", "e4",
                                                              prefix="file")]
    for bad in (None, [], {"foo": 1}):
        with pytest.raises(jobstate.InvalidEvent):
            proc.handler(bad)


def test_deleted_object_fails_clearly(
    jobstate_store: jobstate.JobStore, jobstate_continuation: jobstate.InMemoryContinuation,
    jobstate_clock: jobstate.ManualClock, s3: Any, tmp_path: Path,
) -> None:
    proc = make_processor(jobstate_store, jobstate_continuation, s3, jobstate_clock, tmp_path)
    [job_id] = proc.handler({"Records": [s3_record("in/none.txt", "abc")]})["started"]
    Driver(proc.app, jobstate_continuation, jobstate_clock).run_until_done()
    job = jobstate_store.get(job_id)
    assert job.status is jobstate.JobStatus.FAILED
    assert "in/none.txt" in (job.error or "")


def test_a_step_continues_by_invoking_its_own_function(
        jobstate_store: jobstate.JobStore, jobstate_clock: jobstate.ManualClock, s3: Any,
        tmp_path: Path) -> None:
    """The continuation is an asynchronous Invoke of the worker itself (the template's
    InvokeSelf grant; the IAM coverage check sees it, with the function's ARN)."""
    sink = LambdaSink()
    cont = jobstate.LambdaContinuation("stack-file-processor", client=sink.client)
    proc = make_processor(jobstate_store, cont, s3, jobstate_clock, tmp_path)  # type: ignore[arg-type]
    etag = upload(s3, "in/self.txt", 1000)
    proc.handler(sqs_event({"Records": [s3_record("in/self.txt", etag)]}),
                 FakeLambdaContext(jobstate_clock))
    [(_, start)] = sink.invokes
    proc.app.handler(start, FakeLambdaContext(jobstate_clock, timeout_ms=6_000))
    assert [n for n, _ in sink.invokes] == ["stack-file-processor"] * 2
    assert sink.invokes[1][1]["jobstate"]["step"] == 1
