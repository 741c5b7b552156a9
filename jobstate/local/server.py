"""An embedded DynamoDB: moto's server on a free port, in a thread of this process."""

from __future__ import annotations

import logging
import os
from typing import Any

DUMMY_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
             "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def dummy_credentials(force: bool) -> dict[str, str]:
    """Dummy AWS credentials and region: all of them (`force`), or those not configured
    (no key in the environment, no profile, no shared credentials file)."""
    if force:
        return dict(DUMMY_ENV)
    out = {}
    shared = os.path.expanduser(os.environ.get("AWS_SHARED_CREDENTIALS_FILE",
                                               "~/.aws/credentials"))
    if not (os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE")
            or os.path.exists(shared)):
        out.update({k: v for k, v in DUMMY_ENV.items() if k != "AWS_DEFAULT_REGION"})
    if not os.environ.get("AWS_DEFAULT_REGION") and not os.environ.get("AWS_REGION"):
        out["AWS_DEFAULT_REGION"] = DUMMY_ENV["AWS_DEFAULT_REGION"]
    return out


class EmbeddedDynamoDB:
    """`moto.server.ThreadedMotoServer` on 127.0.0.1 and a free port (memory only)."""

    def __init__(self) -> None:
        self._server: Any = None
        self.endpoint_url: str | None = None

    def start(self) -> str:
        from moto.server import ThreadedMotoServer

        from . import motofix

        motofix.install()
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        self._server = server
        self.endpoint_url = f"http://{host}:{port}"
        return self.endpoint_url

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()
