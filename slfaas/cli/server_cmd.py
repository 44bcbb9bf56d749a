"""``slfaas server``: the control plane and its nodes: one local node agent in the same process
(the default), one per device (``--devices``), or agents on a Ray cluster (``--cluster``)."""
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
    """What the start line says about the nodes (the one place the CLI reads node internals)."""
    info = server.node.describe()
    mode = "" if info.backbone_mode == "shared" else f", backbone {info.backbone_mode} (no sharing)"
    if len(info.nodes) > 1:
        return f"sandbox {info.sandbox}, {len(info.nodes)} nodes on {info.device}{mode}"
    return f"sandbox {info.sandbox}, device {info.device}{mode}"


def _devices(devices: str | None, device: str) -> tuple[str, ...]:
    if devices is None:
        return ()
    if device != "auto":
        raise CliError("give --device or --devices, not both")
    return tuple(d.strip() for d in devices.split(","))


def _warm_pool(warm_pool: int, docker_warm_pool: int | None) -> int:
    if docker_warm_pool is None:
        return warm_pool
    click.echo("warning: --docker-warm-pool is deprecated; use --warm-pool (it works for every --sandbox)", err=True)
    return max(warm_pool, docker_warm_pool)


def _auth_line(server: Any, host: str, credentials: str | None) -> str:
    from slfaas.faas.server import is_loopback

    if server.verifier is not None:
        scrape = "signed, or with the scrape token" if server.config.metrics_token else "signed only"
        return (f"authentication: sigv4 ({len(server.verifier.secrets)} access key(s) from {credentials}; "
                f"unsigned or badly signed requests are refused; /metrics: {scrape})")
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
    "slfaas server --device cuda:0 --prices prices.toml",
    "slfaas server --devices cuda:0,cuda:1            # one node per GPU, one endpoint",
    "slfaas server --cluster ray --ray-resource slfaas_node   # agents on a Ray cluster (docs/CLUSTER.md)"))
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
@click.option("--prewarm-min", type=click.IntRange(0, 64), default=1, show_default=True, metavar="N",
              help="runtimes kept pre-warmed (backbone attached, empty LoRA slots, kernels warm) per resident "
                   "backbone at least; the preloader adds more for busy base models")
@click.option("--prewarm-budget-mb", type=click.IntRange(0), default=8192, show_default=True,
              help="memory the preloader may spend on pre-warmed runtimes")
@click.option("--host-tier-mb", type=click.IntRange(0), default=2048, show_default=True,
              help="memory the preloader may spend on adapters held in host memory")
@click.option("--slot-rank", type=click.IntRange(1, 512), default=16, show_default=True,
              help="pre-warmed runtimes' LoRA slot rank (higher-rank adapters load the slow way)")
@click.option("--slot-modules", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", show_default=True,
              help="modules that get LoRA slots (comma-separated; other adapters load the slow way)")
@click.option("--device", default="auto", show_default=True,
              help="cpu, cuda, cuda:N, or auto = first GPU if present")
@click.option("--devices", metavar="DEV,DEV",
              help="one node per device in this process, behind one endpoint (cuda:0,cuda:1; cpu,cpu for tests)")
@click.option("--cluster", metavar="ray[://HOST:PORT]",
              help="node agents as Ray actors, one per GPU of each Ray node (one per node on CPU): 'ray' joins the "
                   "cluster of this host (RAY_ADDRESS or `ray start`), ray://HOST:PORT a Ray Client address; needs "
                   "pip install 'slfaas[ray]'")
@click.option("--ray-resource", metavar="NAME",
              help="with --cluster: only Ray nodes that advertise this custom resource get node agents")
@click.option("--node-data-dir", metavar="DIR",
              help="with --cluster: where node agents keep code and logs, on their hosts (default DATA_DIR/nodes)")
@click.option("--verify-interval-s", type=float, default=None,
              help="backbone integrity check period (default: 60 on CUDA; CPU backbones are sealed)")
@click.option("--instance-gpu-mb", type=int, default=1536, show_default=True,
              help="upper bound of an instance's GPU memory beside its backbone: admission control counts it "
                   "(measured figures, NVML, below it), and a batching runtime holds its batches and allocator "
                   "to it (raise it to batch long prompts)")
@click.option("--backbone", type=click.Choice(["shared", "private-checkpoint", "private-host-cache"]),
              default="shared", show_default=True,
              help="shared: one backbone per node, borrowed by every instance. For baselines without sharing "
                   "(benchmarks): private-checkpoint, each instance loads its own with from_pretrained; "
                   "private-host-cache, each copies it from the node's host-memory cache; no pre-warmed runtimes")
@click.option("--keep-alive-s", type=float, default=300.0, show_default=True,
              help="stop instances idle this long (the histogram policy's fallback when it has too little history)")
@click.option("--keep-alive-policy", type=click.Choice(["fixed", "histogram"]), default="fixed", show_default=True,
              help="fixed: a TTL; histogram: per function, unload and pre-warm from its idle-time histogram "
                   "(hybrid histogram policy). A function may choose its own (SLFAAS_KEEP_ALIVE_POLICY)")
@click.option("--keep-alive-bin-s", type=float, default=1.0, show_default=True,
              help="with the histogram policy: width of an idle-time bin in seconds")
@click.option("--max-instances", type=int, default=32, show_default=True, help="instances per node")
@click.option("--init-timeout-s", type=float, default=300.0, show_default=True, help="cold-start limit")
@click.option("--scheduler", type=click.Choice(["slo", "fcfs"]), default="slo", show_default=True,
              help="slo: requests wait in per-function queues and run in batches sized to their TTFT SLO, "
                   "least slack first across functions; fcfs: placed at once or refused (429), no queues")
@click.option("--ttft-slo-ms", type=click.FloatRange(1, 600_000), default=1000.0, show_default=True,
              help="time-to-first-token target of functions that do not set SLFAAS_TTFT_SLO_MS (slo scheduler)")
@click.option("--max-queue-per-function", type=click.IntRange(1, 100_000), default=64, show_default=True,
              metavar="N", help="slo: requests of one function waiting on the node; beyond, 429 with Retry-After")
@click.option("--max-queue-s", type=click.FloatRange(0.1, 3600), default=30.0, show_default=True,
              help="slo: the longest a request waits for an instance; then 429 with Retry-After")
@click.option("--max-running-batches", type=click.IntRange(0, 10_000), default=0, show_default=True, metavar="N",
              help="slo: batches running at once on the device, at most (adapted below it from observed TTFT); "
                   "0: --max-instances")
@click.option("--shared-batch-size", type=click.IntRange(1, 64), default=16, show_default=True, metavar="N",
              help="invocations a shared runtime (functions with SLFAAS_SHARED_EXECUTION=1) batches at once")
@click.option("--shared-runtime-gpu-mb", type=click.IntRange(0), default=0, show_default=True, metavar="MB",
              help="GPU memory a shared runtime may hold beside its backbone (its batches and allocator are held "
                   "to it); 0: no bound but the device's free memory (set it where several share a device)")
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
@click.option("--metrics-token", envvar="SLFAAS_METRICS_TOKEN", metavar="TOKEN",
              help="with --auth sigv4: a scrape token /metrics accepts as 'Authorization: Bearer TOKEN' instead "
                   "of a signature (at least 16 characters; prefer the SLFAAS_METRICS_TOKEN environment variable, "
                   "which other users cannot read from the process list)")
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
           warm_pool: int, docker_warm_pool: int | None, prewarm_min: int, prewarm_budget_mb: int,
           host_tier_mb: int, slot_rank: int, slot_modules: str, device: str, devices: str | None,
           cluster: str | None, ray_resource: str | None, node_data_dir: str | None, verify_interval_s: float | None,
           instance_gpu_mb: int, backbone: str, keep_alive_s: float, keep_alive_policy: str, keep_alive_bin_s: float,
           max_instances: int, init_timeout_s: float,
           max_concurrent_invocations: int, idle_timeout_s: int, connection_limit: int, s3_endpoint_url: str | None,
           auth: str, credentials: str | None, auth_max_skew_s: float, metrics_token: str | None,
           insecure: bool, insecure_sandbox: bool, prices: str | None, log_level: str, scheduler: str,
           ttft_slo_ms: float, max_queue_per_function: int, max_queue_s: float, max_running_batches: int,
           shared_batch_size: int, shared_runtime_gpu_mb: int) -> None:
    """Run the API and its node agents.

    The Lambda-compatible API, slfaas's own endpoints and one local node agent, in one
    process (or one per --devices entry, or agents on a Ray cluster with --cluster); Ctrl-C
    stops it."""
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
            idle_timeout_s=idle_timeout_s, connection_limit=connection_limit, prewarm_min=prewarm_min,
            prewarm_budget_mb=prewarm_budget_mb, host_tier_mb=host_tier_mb, slot_rank=slot_rank,
            slot_modules=tuple(m.strip() for m in slot_modules.split(",") if m.strip()),
            metrics_token=metrics_token or None, devices=_devices(devices, device), cluster=cluster,
            ray_resource=ray_resource, node_data_dir=Path(node_data_dir) if node_data_dir else None,
            backbone=backbone, scheduler=scheduler, ttft_slo_ms=ttft_slo_ms,
            max_queue_per_function=max_queue_per_function, max_queue_s=max_queue_s,
            max_running_batches=max_running_batches, shared_max_batch_size=shared_batch_size,
            shared_gpu_mb=shared_runtime_gpu_mb))
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
