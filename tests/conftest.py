"""Shared fixtures: tiny real checkpoints made once per session, and live servers."""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from slfaas.client import zip_adapter
from slfaas.testing.serverproc import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI") == "true"
# The sandbox backend of every LiveServer that does not choose one: `SLFAAS_TEST_SANDBOX=docker
# pytest tests/integration` runs the same boto3 tests with a container per instance (make test-docker).
TEST_SANDBOX = os.environ.get("SLFAAS_TEST_SANDBOX", "process")


@dataclass(frozen=True)
class TinyAssets:
    base: Path            # tiny Llama (TINY shape) + tokenizer
    adapter_a: Path       # random LoRA, seed 1, base_model_name_or_path = base
    adapter_b: Path       # random LoRA, seed 2
    other_base: Path      # a base model of another shape
    misfit_adapter: Path  # adapter made for other_base: must not fit base

    def zip(self, adapter: Path, extra: dict[str, str] | None = None) -> bytes:
        """The adapter zipped at the root, plus extra files (e.g. a handler.py)."""
        import io
        import zipfile

        raw = zip_adapter(adapter)
        if not extra:
            return raw
        buf = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(raw)) as src, zipfile.ZipFile(buf, "w") as dst:
            for info in src.infolist():
                dst.writestr(info, src.read(info))
            for name, text in extra.items():
                dst.writestr(name, text)
        return buf.getvalue()


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory: pytest.TempPathFactory) -> TinyAssets:
    from slfaas.testing.tinymodels import TINY, TinyShape, make_adapter, make_base_model

    root = tmp_path_factory.mktemp("assets")
    base = make_base_model(root / "base")
    other_shape = TinyShape(96, 160, 2, 4, 2, 512)
    other = make_base_model(root / "other-base", shape=other_shape, seed=3)
    del TINY
    return TinyAssets(
        base=base,
        adapter_a=make_adapter(base, root / "adapter-a", seed=1, base_model_name=str(base)),
        adapter_b=make_adapter(base, root / "adapter-b", seed=2, base_model_name=str(base)),
        other_base=other,
        misfit_adapter=make_adapter(other, root / "adapter-misfit", seed=4, base_model_name=str(base)),
    )


class LiveServer:
    """``slfaas server`` as a real subprocess on a free port (with the suite's sandbox backend)."""

    def __init__(self, data_dir: Path, *extra: str):
        self.data_dir = data_dir
        self.extra = extra
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.output: list[str] = []

    def start(self, timeout_s: float = 60) -> "LiveServer":
        extra = list(self.extra)
        if TEST_SANDBOX != "process" and "--sandbox" not in extra:
            extra += ["--sandbox", TEST_SANDBOX]
        if not any(a.startswith("--prewarm") for a in extra):
            # nothing pre-warmed unless a test asks (tests/integration/test_prewarmed.py): each
            # pre-warmed runtime is a process importing torch, and the suite runs many servers
            # on a 2-core machine; a cold start is then the fresh process these tests expect
            extra += ["--prewarm-min", "0", "--prewarm-budget-mb", "0"]
        server = ServerProcess(self.data_dir, *extra, timeout_s=timeout_s)
        self.proc, self.url, self.output = server.proc, server.url, server.lines
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout_s)

    def client(self):  # type: ignore[no-untyped-def]
        import boto3
        from botocore.config import Config

        return boto3.client("lambda", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id="test", aws_secret_access_key="test",
                            config=Config(retries={"total_max_attempts": 1}, read_timeout=300))

    def api(self, method: str, path: str, body: object = None) -> object:
        from slfaas.client import api
        return api(self.url, method, path, body)


@pytest.fixture
def live_server_factory(tmp_path: Path) -> Iterator:
    servers: list[LiveServer] = []

    def make(*extra: str, data_dir: Path | None = None) -> LiveServer:
        s = LiveServer(data_dir or tmp_path / "data", *extra).start()
        servers.append(s)
        return s

    yield make
    for s in servers:
        if s.alive():
            s.stop()


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    s = LiveServer(tmp_path_factory.mktemp("server-data"), "--keep-alive-s", "600").start()
    yield s
    if s.alive():
        s.stop()


@pytest.fixture(scope="module")
def s3_url():  # type: ignore[no-untyped-def]
    """A real S3 (moto's HTTP server) on a free port, for code given as S3Bucket/S3Key."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def deploy(client, name: str, zip_bytes: bytes, **params) -> dict:  # type: ignore[no-untyped-def]
    """create_function + wait for Active, the way a boto3 user would."""
    client.create_function(FunctionName=name, Runtime="slfaas-lora", Role="arn:aws:iam::000000000000:role/t",
                           Code={"ZipFile": zip_bytes}, **params)
    client.get_waiter("function_active_v2").wait(FunctionName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 300})
    return client.get_function_configuration(FunctionName=name)


@pytest.fixture(scope="session")
def postgres():  # type: ignore[no-untyped-def]
    """A private PostgreSQL server for the session (Debian's postgresql package); skipped, saying
    why, where it cannot run, except in CI (CI=true), where that is a failure."""
    from slfaas.testing.postgres import PostgresServer, PostgresUnavailable

    try:
        if importlib.util.find_spec("psycopg") is None:   # the driver of --database-url postgresql+psycopg://
            raise PostgresUnavailable("the psycopg driver is not installed")
        server = PostgresServer().start()
    except PostgresUnavailable as exc:
        if IN_CI:
            pytest.fail(f"PostgreSQL must run in CI (make postgres-setup installs it): {exc}")
        pytest.skip(f"no PostgreSQL here: {exc} (as root, `make postgres-setup` installs it; "
                    f"pip install 'psycopg[binary]')")
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The registry's database: SQLite in the test's directory, or a fresh database on the
    session's PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    return request.getfixturevalue("postgres").create_database()


@pytest.fixture
def registry_flags(database_url: str) -> tuple[str, ...]:
    """``slfaas server`` flags for ``database_url``: none for SQLite (the data dir's own registry,
    the default), ``--database-url`` for PostgreSQL."""
    return () if database_url.startswith("sqlite") else ("--database-url", database_url)
