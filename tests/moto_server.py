"""A moto server on loopback for the ``aws`` driver's tests: moto's server mode, real HTTP, not the
in-process mock (boto3 talks to it exactly as it talks to AWS).

One server per test process (``ThreadedMotoServer`` on a free port); every test gets it reset
(``POST /moto-api/reset``: no instance, volume or tag survives a test) with authentication off, and
the ``aws`` driver's caches cleared. In CI (``CI=true``) a server that cannot start fails the tests
that need it; elsewhere they are skipped with the reason.

Use it by importing the fixture: ``from tests.moto_server import moto_server  # noqa: F401``.

moto's SSM answers what it stores but runs nothing: every command has succeeded at once (exit 0, no
output), and CancelCommand and ListCommandInvocations are not implemented (500). ``answer_ssm`` makes the
driver's clients answer chosen SSM operations themselves (a command still running, a failure, output).
"""

import atexit
import dataclasses
import json
import os
import socket
import urllib.request

import boto3
import pytest

ACCESS_KEY, SECRET_KEY = "AKIASTACKYARDTEST000", "stackyard-test-secret"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, body: bytes = b"") -> None:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


@dataclasses.dataclass
class MotoServer:
    """The running server: its URL, and helpers to look at it with boto3 like an operator would."""

    url: str

    def reset(self) -> None:
        _post(f"{self.url}/moto-api/reset-auth", b"inf")
        _post(f"{self.url}/moto-api/reset")

    def require_auth(self) -> None:
        """From now on every request needs credentials moto's IAM knows (ours are unknown to it)."""
        _post(f"{self.url}/moto-api/reset-auth", b"0")

    def ec2(self, region: str = "us-east-1"):
        return self.client("ec2", region)

    def ssm(self, region: str = "us-east-1"):
        return self.client("ssm", region)

    def client(self, service: str, region: str = "us-east-1"):
        return boto3.client(service, region_name=region, endpoint_url=self.url, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY)

    def credentials(self) -> dict:
        return {"type": "access_key", "access_key": ACCESS_KEY, "secret_key": SECRET_KEY}

    def config(self, regions=("us-east-1",), **extra) -> dict:
        return {"regions": list(regions), "endpoint_url": self.url, **extra}


def answer_ssm(monkeypatch, **answers) -> list:
    """Clients the aws driver makes from now on answer each SSM ``Operation=answer`` given (a dict, read at
    each call, or an AWS error code) without asking the server; returns the ``(operation, parameters)``
    of the calls so answered."""
    from backends.drivers import aws, aws_calls

    make_client = aws_calls.make_client
    asked: list = []

    def short_circuit(model, params, **_):
        answer = answers[model.name]
        asked.append((model.name, json.loads(params["body"] or b"{}")))
        failed = isinstance(answer, str)

        class Http:
            status_code = 400 if failed else 200

        body = {"Error": {"Code": answer, "Message": f"{answer} (injected)"}} if failed else dict(answer)
        return Http(), {**body, "ResponseMetadata": {"HTTPStatusCode": Http.status_code}}

    def answering(*args, **kwargs):
        client = make_client(*args, **kwargs)
        for operation in answers:
            client.meta.events.register(f"before-call.ssm.{operation}", short_circuit)
        return client

    monkeypatch.setattr(aws_calls, "make_client", answering)
    aws.clear_caches()
    return asked


_running: list[MotoServer] = []  # the session's server, started by the first test that needs it


def _session_server() -> MotoServer:
    """The session's server (started once, stopped when the test process exits)."""
    if not _running:
        try:
            from moto.server import ThreadedMotoServer

            server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
            server.start()
            host, port = server.get_host_and_port()
            moto = MotoServer(url=f"http://{host}:{port}")
            moto.reset()
        except Exception as err:  # any failure to start means there is no moto server
            message = f"the moto server could not start: {type(err).__name__}: {err}"
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(message + " (CI runs the aws tests: they fail rather than skip)")
            pytest.skip(message)
        atexit.register(server.stop)
        _running.append(moto)
    return _running[0]


@pytest.fixture
def moto_server():
    """The session's moto server, reset for this test, with the aws driver's caches empty."""
    from backends.drivers import aws

    moto = _session_server()
    moto.reset()
    aws.clear_caches()
    yield moto
    moto.reset()
