"""Deployable Lambda handlers built on jobstate (see template.yaml and docs/).

Each module builds one module-level `App` with `build_app()` and exposes `handler`.
Nothing connects at import time: the DynamoDB, Lambda, S3 and SES clients are created
on first use, so a cold start pays only for the imports. Tests call `build_app(...)`
with a moto store, an `InMemoryContinuation` and fakes for the external systems.

- `s3_file_processor` — job type `file-processor`: one job per uploaded object version.
- `etl_poller` — job type `etl-poller`: upload, start an ETL job once, poll, notify once.
- `batch_mailer` — job types `batch-mailer` (parent) and `batch-mailer-chain` (workers).
- `sweeper` — scheduled: re-dispatches lost steps and finished waits.
- `status_api` — Lambda function URL: read, list and cancel jobs.
"""


class NoTimeForABatch(RuntimeError):
    """A step could not fit a single batch: committing it would loop without progress."""

    def __init__(self, remaining_ms: int) -> None:
        super().__init__(
            f"no time for a single batch ({remaining_ms} ms left in the invocation); the "
            "step is retried, and fails for good if this repeats: raise the function "
            "timeout or make batches smaller")
