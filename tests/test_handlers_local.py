"""The seed handlers on the local Lambda runtime: worker subprocesses killed at their
deadline, at-least-once async delivery, chaos (duplicates, SIGKILLs at crash points,
lost continuations, throttled invokes), the sweeper on a timer, DynamoDB and S3 on a
moto server. Every effect is counted in a sink outside the workers: S3 objects on the
server, or an HTTP fake in this process.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jobstate
from handlers import batch_mailer, etl_poller, s3_file_processor

# Real worker processes on real deadlines: run alone, not beside other tests
# (scripts/test runs these after the parallel tier).
pytestmark = pytest.mark.serial

local = pytest.importorskip("jobstate.local")



@pytest.fixture(scope="module")
def moto_server() -> Iterator[str]:
    from jobstate.local.engines import MotoServer

    server = MotoServer(patched=True).start()  # S3 and DynamoDB on one endpoint
    try:
        yield server.endpoint_url
    finally:
        server.stop()


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory on sys.path (workers inherit it) for small per-test app modules."""
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def write_module(directory: Path, name: str, source: str) -> None:
    (directory / f"{name}.py").write_text(textwrap.dedent(source))


def s3_client(url: str) -> Any:
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1")


def chaos(seed: int, crash: float = 0.15, duplicate: float = 0.2, lost: float = 0.1) -> Any:
    return local.Chaos(seed, duplicate=duplicate, crash=crash, lost=lost, throttle_invoke=0.1)


def assert_faults(rt: Any) -> None:
    """Chaos really happened in this run."""
    total = rt.stats_dict()["total"]
    # Which faults hit depends on how many steps real time allowed; that some did does not.
    assert sum(total[k] for k in ("crashes_injected", "kills_at_timeout",
                                  "duplicates_delivered", "lost_continuations",
                                  "throttled_invokes")) > 0, total


@pytest.mark.slow
def test_file_processor_on_the_local_runtime(moto_server: str, app_dir: Path) -> None:
    s3 = s3_client(moto_server)
    s3.create_bucket(Bucket="local-uploads")
    body = "".join(f"row {i} a b\n" for i in range(2000)).encode()
    etag = s3.put_object(Bucket="local-uploads", Key="in/f.txt", Body=body)["ETag"].strip('"')
    write_module(app_dir, "local_file_processor", """
        import time
        from handlers import s3_file_processor as fp

        def work(lines):
            time.sleep(0.15)  # slow enough that the file takes several invocations
            return fp.count_words(lines)

        processor = fp.FileProcessor(process_lines=work, batch_lines=50)
        app = processor.app
    """)
    ov = s3_file_processor.ObjectVersion("local-uploads", "in/f.txt", None, etag, len(body))
    with local.LocalRuntime("local_file_processor:app", endpoint_url=moto_server,
                            table="local-fp", timeout_ms=3_000, recursive_loop="Allow",
                            chaos=chaos(3, crash=0.3, duplicate=0.3, lost=0.2),
                            dispatch_timeout_s=2, lease_grace_s=0.5,
                            sweep_interval_s=0.5,
                            env={"AWS_ENDPOINT_URL_S3": moto_server}) as rt:
        job_id = rt.start(s3_file_processor.JOB_TYPE, ov.to_input(), job_id=ov.job_id)
        assert rt.start(s3_file_processor.JOB_TYPE, ov.to_input(), job_id=ov.job_id) == job_id
        view = rt.wait([job_id], timeout_s=120)[job_id]
        assert_faults(rt)
    assert view.status is jobstate.JobStatus.SUCCEEDED, view.error
    assert view.result["lines"] == 2000 and view.step >= 2
    offsets = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="local-uploads",
                                                             Prefix=f"results/{job_id}/"):
        for obj in page.get("Contents", []):
            doc = json.loads(s3.get_object(Bucket="local-uploads", Key=obj["Key"])["Body"]
                             .read())
            offsets.append(doc["offset"])
            assert doc["result"]["lines"] == doc["count"] == 50
    assert sorted(offsets) == list(range(0, 2000, 50))


@pytest.mark.slow  # ~25 s: real backoff waits, resumed by the sweeper
def test_etl_poller_on_the_local_runtime(app_dir: Path) -> None:
    fake = etl_poller.FakeEtlApi(complete_after=7)
    write_module(app_dir, "local_etl", """
        from handlers import etl_poller

        poller = etl_poller.EtlPoller(poll_interval_s=0.5, max_poll_interval_s=2)
        app = poller.app
    """)
    with fake.serve() as url, local.LocalRuntime(
            "local_etl:app", timeout_ms=3_000, recursive_loop="Allow", chaos=chaos(5),
            dispatch_timeout_s=2, lease_grace_s=0.5, sweep_interval_s=0.5,
            env={"ETL_API_URL": url}) as rt:
        ids = [rt.start(etl_poller.JOB_TYPE, {"report": {"day": d}, "name": f"day-{d}"},
                        job_id=f"etl-day-{d}") for d in range(3)]
        views = rt.wait(ids, timeout_s=120)
        assert_faults(rt)
    assert all(v.status is jobstate.JobStatus.SUCCEEDED for v in views.values()), views
    assert fake.starts == 3 and len(fake.jobs) == 3  # one ETL job per report
    assert fake.notify_posts == 3  # one notification each, never re-sent
    assert sorted(n["subject"] for n in fake.notifications) == [
        f"ETL finished: day-{d}" for d in range(3)]


OUTBOX_MAILER = """
    import uuid

    import boto3
    from handlers import batch_mailer

    class S3OutboxMailer:
        # Every accepted message is an object outbox/<key>/<uuid> on the moto server:
        # a sink outside the workers that also answers lookup(key).
        def __init__(self):
            self.s3 = boto3.client("s3")

        def send(self, to, subject, body, *, key):
            self.s3.put_object(Bucket="outbox", Key=f"outbox/{key}/{uuid.uuid4().hex}",
                               Body=to.encode())
            return key

        def lookup(self, key):
            found = self.s3.list_objects_v2(Bucket="outbox", Prefix=f"outbox/{key}/")
            return key if found.get("KeyCount") else None

    mailer_app = batch_mailer.BatchMailer(mailer=S3OutboxMailer())
    app = mailer_app.app
"""


@pytest.mark.slow
def test_batch_mailer_on_the_local_runtime(moto_server: str, app_dir: Path) -> None:
    s3 = s3_client(moto_server)
    s3.create_bucket(Bucket="outbox")
    write_module(app_dir, "local_mailer", OUTBOX_MAILER)
    users, chains = 200, 4
    with local.LocalRuntime("local_mailer:app", endpoint_url=moto_server, table="local-mail",
                            timeout_ms=3_000, recursive_loop="Allow", chaos=chaos(8, crash=0.3),
                            dispatch_timeout_s=2, lease_grace_s=0.5, sweep_interval_s=0.5,
                            concurrency=4, env={"AWS_ENDPOINT_URL_S3": moto_server}) as rt:
        job_id = rt.start(batch_mailer.PARENT, {"users": users, "chains": chains,
                                                "campaign": "local", "batch": 25},
                          job_id="local-campaign")
        view = rt.wait([job_id], timeout_s=180)[job_id]
        assert_faults(rt)
    assert view.status is jobstate.JobStatus.SUCCEEDED, view.error
    assert view.result["sent"] == users and view.result["failed_chains"] == []
    per_user: Counter[str] = Counter()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="outbox"):
        for obj in page.get("Contents", []):
            per_user[obj["Key"].split("/")[2]] += 1  # outbox/local/<uid>/<uuid>
    assert set(per_user) == {str(u) for u in range(1, users + 1)}
    assert max(per_user.values()) == 1
