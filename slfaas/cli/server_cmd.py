"""``slfaas server``: the control plane and one local node agent in one process."""
from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

import click

from slfaas.client import CliError
from slfaas.cli.core import examples
from slfaas.errors import SlfaasError

DEFAULT_DATA_DIR = Path("~/.slfaas").expanduser()


def node_summary(server: Any) -> str:
    """What the start line says about the node (the one place the CLI reads node internals)."""
    info = server.node.describe()
    return f"sandbox {info.sandbox}, device {info.device}"


def _warm_pool(warm_pool: int, docker_warm_pool: int | None) -> int:
    if docker_warm_pool is None:
        return warm_pool
    click.echo("warning: --docker-warm-pool is deprecated; use --warm-pool (it works for every --sandbox)", err=True)
    return max(warm_pool, docker_warm_pool)


def _auth_line(server: Any, host: str, credentials: str | None) -> str:
    from slfaas.faas.server import is_loopback

    if server.verifier is not None:
        return (f"authentication: sigv4 ({len(server.verifier.secrets)} access key(s) from {credentials}; "
                f"unsigned or badly signed requests are refused)")
    if is_loopback(host):
        return (f"authentication: none; bound to loopback ({host}) only, so only this machine can reach it "
                f"(--auth sigv4 --credentials FILE to serve a network)")
    return (f"WARNING: authentication: none on {host} (--insecure): anyone who reaches this port can "
            f"deploy and run code")


@click.command("server", epilog=examples(
    "slfaas server                                   # loopback:9000, data in ~/.slfaas",
    "slfaas server --port 0 --data-dir /tmp/sl       # any free port (the URL is printed)",
    "slfaas server --sandbox docker --warm-pool 2    # a container per instance, 2 pre-started",
    "slfaas server --host 0.0.0.0 --auth sigv4 --credentials creds.ini",
    "slfaas server --device cuda:0 --prices prices.toml"))
@click.option("--host", default="127.0.0.1", show_default=True, help="address to bind")
@click.option("--port", type=int, default=9000, show_default=True, help="port to bind, 0 for any free port")
@click.option("--data-dir", default=str(DEFAULT_DATA_DIR), show_default=True, help="registry, code and logs")
@click.option("--database-url", help="any SQLAlchemy URL for the registry (default: SQLite in the data dir)")
@click.option("--sandbox", type=click.Choice(["process", "docker"]), default="process", show_default=True,
              help="instance isolation: a process, or a Docker container per instance")
@click.option("--docker-image", default=None,
              help="with --sandbox docker: the runtime image (default slfaas/runtime:local, made by "
                   "`slfaas node build-image`)")
@click.option("--warm-pool", type=int, default=0, metavar="N", show_default=True,
              help="keep N generic runtimes pre-started (libraries imported; processes or containers, as "
                   "--sandbox says), each specialised into a function's instance on a cold start")
@click.option("--docker-warm-pool", type=int, default=None, metavar="N", help="deprecated alias of --warm-pool")
@click.option("--device", default="auto", show_default=True,
              help="cpu, cuda, cuda:N, or auto = first GPU if present")
@click.option("--verify-interval-s", type=float, default=None,
              help="backbone integrity check period (default: 60 on CUDA; CPU backbones are sealed)")
@click.option("--instance-gpu-mb", type=int, default=1536, show_default=True,
              help="upper bound of an instance's GPU memory for admission control; measured figures "
                   "(NVML) are used below it")
@click.option("--keep-alive-s", type=float, default=300.0, show_default=True,
              help="stop instances idle this long (the histogram policy's fallback when it has too little history)")
@click.option("--keep-alive-policy", type=click.Choice(["fixed", "histogram"]), default="fixed", show_default=True,
              help="fixed: a TTL; histogram: per function, unload and pre-warm from its idle-time histogram "
                   "(hybrid histogram policy). A function may choose its own (SLFAAS_KEEP_ALIVE_POLICY)")
@click.option("--keep-alive-bin-s", type=float, default=1.0, show_default=True,
              help="with the histogram policy: width of an idle-time bin in seconds")
@click.option("--max-instances", type=int, default=32, show_default=True, help="instances per node")
@click.option("--init-timeout-s", type=float, default=300.0, show_default=True, help="cold-start limit")
@click.option("--max-concurrent-invocations", type=int, default=64, show_default=True, metavar="N",
              help="invocations in flight at once; beyond, 429 TooManyRequestsException with Retry-After")
@click.option("--idle-timeout-s", type=int, default=30, show_default=True,
              help="close an HTTP connection idle this long")
@click.option("--connection-limit", type=int, default=1000, show_default=True, metavar="N",
              help="open HTTP connections at most")
@click.option("--s3-endpoint-url", default=None,
              help="S3 endpoint for function code given as S3Bucket/S3Key (default: boto3's own, which honours "
                   "AWS_ENDPOINT_URL_S3)")
@click.option("--auth", type=click.Choice(["none", "sigv4"]), default="none", show_default=True,
              help="sigv4: verify every request's AWS Signature V4 against --credentials; none: no "
                   "authentication, so only a loopback --host is allowed unless --insecure")
@click.option("--credentials", metavar="FILE",
              help="with --auth sigv4: accepted keys, AWS shared-credentials format "
                   "([name] aws_access_key_id=... aws_secret_access_key=...)")
@click.option("--auth-max-skew-s", type=float, default=300.0, show_default=True,
              help="with --auth sigv4: how far a request's signing date may be from now (AWS's 5 minutes); "
                   "older requests, replays included, are refused as expired")
@click.option("--insecure", is_flag=True,
              help="allow a non-loopback --host without authentication (trusted networks only)")
@click.option("--insecure-sandbox", is_flag=True,
              help="run --sandbox process instances as plain processes of this user, unisolated (where "
                   "bubblewrap, root or namespaces are missing; every function can then read the data dir)")
@click.option("--prices", metavar="FILE",
              help="price sheet (TOML or YAML) over the built-in defaults; see docs/prices.example.toml")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
def server(host: str, port: int, data_dir: str, database_url: str | None, sandbox: str, docker_image: str | None,
           warm_pool: int, docker_warm_pool: int | None, device: str, verify_interval_s: float | None,
           instance_gpu_mb: int, keep_alive_s: float, keep_alive_policy: str, keep_alive_bin_s: float,
           max_instances: int, init_timeout_s: float,
           max_concurrent_invocations: int, idle_timeout_s: int, connection_limit: int, s3_endpoint_url: str | None,
           auth: str, credentials: str | None, auth_max_skew_s: float,
           insecure: bool, insecure_sandbox: bool, prices: str | None, log_level: str) -> None:
    """Run the API and a local node agent.

    The Lambda-compatible API, slfaas's own endpoints and one local node agent, in one
    process; Ctrl-C stops it."""
    from slfaas.faas.server import ServerConfig, SlfaasServer

    logging.basicConfig(level=getattr(logging, log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        srv = SlfaasServer(ServerConfig(
            data_dir=Path(data_dir), host=host, port=port, database_url=database_url, sandbox=sandbox,
            keep_alive_s=keep_alive_s, keep_alive_policy=keep_alive_policy, keep_alive_bin_s=keep_alive_bin_s,
            max_instances=max_instances, init_timeout_s=init_timeout_s, device=device,
            verify_interval_s=verify_interval_s, instance_gpu_mb=instance_gpu_mb, docker_image=docker_image,
            warm_pool=_warm_pool(warm_pool, docker_warm_pool), s3_endpoint_url=s3_endpoint_url, auth=auth,
            credentials_file=Path(credentials) if credentials else None, insecure=insecure,
            auth_max_skew_s=auth_max_skew_s, prices_file=Path(prices) if prices else None,
            insecure_sandbox=insecure_sandbox, max_concurrent_invocations=max_concurrent_invocations,
            idle_timeout_s=idle_timeout_s, connection_limit=connection_limit))
    except OSError as exc:
        raise CliError(f"cannot start the server on {host}:{port}: {exc}")
    except (ValueError, SlfaasError) as exc:
        raise CliError(str(exc))

    def _stop(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    click.echo(_auth_line(srv, host, credentials))
    click.echo(f"slfaas server listening on {srv.url} (data dir {Path(data_dir).resolve()}, "
               f"{node_summary(srv)}); Ctrl-C stops it")
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.close()
    click.echo("slfaas server stopped")
