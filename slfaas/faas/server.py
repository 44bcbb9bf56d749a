"""The server: the control plane behind one HTTP server, and its nodes: one in this process
(the default), one per device (``devices``), or one agent per GPU of a Ray cluster (``cluster``),
always behind one ``NodeSet``."""
from __future__ import annotations

import ipaddress
import logging
import resource
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from waitress.server import create_server

from slfaas.billing.prices import default_prices, load_prices
from slfaas.billing.service import CostService
from slfaas.faas import auth
from slfaas.faas.admission import DEFAULT_MAX_CONCURRENT_INVOCATIONS
from slfaas.faas.api import create_app
from slfaas.faas.http_lanes import accept_in_batches, invocation_classifier, lane_dispatcher
from slfaas.faas.metrics import ControlPlaneMetrics, NodesCollector
from slfaas.faas.registry import Registry
from slfaas.faas.service import FunctionService
from slfaas.faas.node_setup import build_nodes, check_keep_alive, keep_alive_settings
from slfaas.gpu_node.config import NodeConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 9000
    database_url: str | None = None
    sandbox: str = "process"
    keep_alive_s: float = 300.0
    keep_alive_policy: str = "fixed"         # or "histogram": the hybrid histogram policy (a function may set its own)
    keep_alive_bin_s: float = 1.0            # the histogram's bin width
    max_instances: int = 32
    init_timeout_s: float = 300.0
    device: str = "cpu"
    region: str = "us-east-1"
    threads: int = 16                        # HTTP threads for everything but invocations (control, health, 429s)
    max_concurrent_invocations: int = DEFAULT_MAX_CONCURRENT_INVOCATIONS   # in flight; beyond: 429 at once
    idle_timeout_s: int = 30                 # an HTTP connection idle this long is closed
    connection_limit: int = 1000             # open HTTP connections; beyond, new ones wait in the backlog
    verify_interval_s: float | None = None   # None: 60 s on CUDA, on demand only on CPU
    instance_gpu_mb: int = 1536
    docker_image: str | None = None          # --sandbox docker: the runtime image (default slfaas/runtime:local)
    warm_pool: int = 0                       # generic runtimes kept pre-started (process or container)
    docker_warm_pool: int = 0                # deprecated alias of warm_pool (the larger one counts)
    s3_endpoint_url: str | None = None       # where Code.S3Bucket/S3Key are fetched (default: boto3's own)
    auth: str = "none"                       # "none" (loopback only) or "sigv4" (needs credentials_file)
    credentials_file: Path | None = None     # --auth sigv4: AWS shared-credentials file of accepted keys
    insecure: bool = False                   # allow a non-loopback bind without authentication
    auth_max_skew_s: float = 300.0           # --auth sigv4: accepted distance of a request's date from now
    prices_file: Path | None = None          # --prices: a TOML/YAML price sheet over the built-in defaults
    insecure_sandbox: bool = False           # --sandbox process without isolation: plain processes of this user
    prewarm_min: int = 1                     # runtimes kept pre-warmed per resident backbone, at least
    prewarm_budget_mb: int = 8192            # memory the preloader may spend on pre-warmed runtimes
    host_tier_mb: int = 2048                 # memory the preloader may spend on the host adapter tier
    slot_rank: int = 16                      # pre-warmed runtimes' LoRA slots: largest rank ...
    slot_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    metrics_token: str | None = None         # --auth sigv4: a bearer token that may scrape /metrics unsigned
    devices: tuple[str, ...] = ()            # --devices: one node per device in this process (instead of device)
    cluster: str | None = None               # --cluster ray[://HOST:PORT]: node agents as Ray actors
    ray_resource: str | None = None          # --cluster: only Ray nodes advertising this resource get agents
    node_data_dir: Path | None = None        # --cluster: agents' data dirs on their hosts (default DATA_DIR/nodes)
    backbone: str = "shared"                 # or a baseline without sharing (gpu_node/resources/private_backbone.py)
    scheduler: str = "slo"                   # "slo": per-function queues, SLO-aware batches; "fcfs": no queues
    ttft_slo_ms: float = 1000.0              # a function's TTFT SLO unless it sets SLFAAS_TTFT_SLO_MS
    max_queue_per_function: int = 64         # slo: requests waiting per function; beyond, 429
    max_queue_s: float = 30.0                # slo: the longest a request waits for an instance; then 429
    max_running_batches: int = 0             # slo: batches running at once on the device (0: --max-instances)
    shared_max_batch_size: int = 16          # a shared runtime's capacity (functions in shared execution)
    shared_gpu_mb: int = 0                   # a shared runtime's device memory beside its backbone (0: no bound)


MIN_METRICS_TOKEN_CHARS = 16


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_auth_config(config: ServerConfig) -> auth.SigV4Verifier | None:
    """The verifier for ``--auth sigv4``; without authentication, refuse anything but a loopback
    bind unless ``insecure`` says the network is trusted."""
    if config.auth == "sigv4":
        if config.credentials_file is None:
            raise ValueError("--auth sigv4 needs --credentials FILE (AWS shared-credentials format)")
        if config.metrics_token is not None and (len(config.metrics_token) < MIN_METRICS_TOKEN_CHARS
                                                 or not config.metrics_token.isprintable()
                                                 or config.metrics_token != config.metrics_token.strip()):
            raise ValueError(f"--metrics-token must be at least {MIN_METRICS_TOKEN_CHARS} printable characters "
                             f"without surrounding spaces (e.g. `openssl rand -hex 24`)")
        return auth.SigV4Verifier(auth.load_credentials(Path(config.credentials_file)), config.auth_max_skew_s)
    if config.auth != "none":
        raise ValueError(f"unknown --auth {config.auth!r} (available: none, sigv4)")
    if config.metrics_token:
        raise ValueError("--metrics-token is for --auth sigv4 (without authentication /metrics is open)")
    if not is_loopback(config.host) and not config.insecure:
        raise ValueError(f"refusing to bind {config.host} without authentication: anyone who reaches the port could "
                         f"deploy and run code. Use --auth sigv4 --credentials FILE, bind 127.0.0.1, or pass "
                         f"--insecure if the network is trusted")
    return None


def http_options(config: ServerConfig) -> dict[str, Any]:
    """waitress's settings: a thread for every invocation slot plus ``threads`` for the rest,
    so control operations never wait for a thread behind invocations (and ``http_lanes``
    serves queued control requests first); idle connections closed after
    ``idle_timeout_s``; poll() rather than select(), which stops at descriptor 1024; and
    reading ahead on a connection while its request runs, which is how a client that went
    away is noticed (``waitress.client_disconnected``) and its invocation cancelled."""
    for name in ("threads", "max_concurrent_invocations", "idle_timeout_s", "connection_limit"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a whole number of at least 1, got {value!r}")
    return {"threads": config.threads + config.max_concurrent_invocations,
            "connection_limit": _connection_room(config.connection_limit),
            "channel_timeout": config.idle_timeout_s, "cleanup_interval": max(1, min(30, config.idle_timeout_s // 2)),
            "asyncore_use_poll": True, "channel_request_lookahead": 1}


def _connection_room(wanted: int, reserve: int = 256) -> int:
    """Raise the soft open-file limit so ``wanted`` connections fit beside the node's own
    descriptors (sandbox pipes, sockets, the registry); fewer if the hard limit says so."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + reserve
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < need:
        room = max(1, soft - reserve)
        log.warning("open-file limit %d allows %d HTTP connections, not %d", soft, room, wanted)
        return room
    return wanted


class SlfaasServer:
    def __init__(self, config: ServerConfig):
        self.config = config
        self.verifier = check_auth_config(config)
        options = http_options(config)   # checked before anything starts
        check_keep_alive(NodeConfig(Path(config.data_dir), **keep_alive_settings(config)))
        data_dir = Path(config.data_dir).expanduser().resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        self.registry = Registry(config.database_url) if config.database_url else Registry.for_data_dir(data_dir)
        prices = load_prices(Path(config.prices_file)) if config.prices_file else default_prices()
        self.nodes = build_nodes(config, data_dir, prices, on_usage=lambda rec: self.service.cost.record(rec),
                                 on_node_usage=self.registry.put_node_usage,
                                 on_integrity=self.registry.record_integrity_event,
                                 on_instance_usage=self.registry.record_instance_usage)
        self.node = self.nodes.nodes
        self.device = self.node.describe().device
        cost = CostService(self.registry, prices, live_nodes=self.node.node_usages,
                           live_instances=self.node.live_instances)
        self.service = FunctionService(self.registry, self.node, data_dir / "code", region=config.region,
                                       public_url=lambda: self.url, s3_endpoint_url=config.s3_endpoint_url, cost=cost,
                                       max_concurrent_invocations=config.max_concurrent_invocations,
                                       metrics=self._metrics())
        self.app = create_app(self.service)
        if self.verifier is not None:
            auth.install(self.app, self.verifier, config.metrics_token)
        dispatcher = lane_dispatcher(invocation_classifier(self.app), options["threads"])
        self._http = create_server(self.app, host=config.host, port=config.port, ident="slfaas", _dispatcher=dispatcher,
                                   **options)
        accept_in_batches(self._http)
        self._thread: threading.Thread | None = None
        self._closed = False

    def _metrics(self) -> ControlPlaneMetrics:
        """One registry for ``/metrics``: the control plane's counters and its nodes' metrics."""
        registry = CollectorRegistry(auto_describe=True)
        if self.nodes.metrics:
            registry.register(NodesCollector(self.nodes.metrics))
        return ControlPlaneMetrics(registry)

    @property
    def port(self) -> int:
        return int(self._http.effective_port)  # type: ignore[attr-defined]

    @property
    def url(self) -> str:
        host = self.config.host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}"

    def serve_forever(self) -> None:
        log.info("slfaas listening on %s (data dir %s)", self.url, self.config.data_dir)
        try:
            self._http.run()
        finally:
            self.close()

    def start_background(self) -> "SlfaasServer":
        self._thread = threading.Thread(target=self._http.run, daemon=True, name="slfaas-http")
        self._thread.start()
        return self

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        log.info("stopping: closing the API and every sandbox")
        try:
            self._http.close()
        except Exception:  # already closed by the run loop
            pass
        self.nodes.close()
        self.registry.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
