"""The ``slfaas`` command line."""
from __future__ import annotations

import argparse
import codecs
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

from slfaas.cli.client import CliError, api, endpoint_default, lambda_client, unreachable, zip_adapter
from slfaas.errors import SlfaasError

DEFAULT_DATA_DIR = Path("~/.slfaas").expanduser()
ROLE = "arn:aws:iam::000000000000:role/slfaas"


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _boto_call(endpoint: str, fn: Callable[[Any], Any]) -> Any:
    from botocore.exceptions import ClientError, EndpointConnectionError

    try:
        return fn(lambda_client(endpoint))
    except EndpointConnectionError as exc:
        raise CliError(unreachable(endpoint, exc.__class__.__name__))
    except ClientError as exc:
        err = exc.response.get("Error", {})
        raise CliError(f"{err.get('Code')}: {err.get('Message')}")


def _warm_pool(args: argparse.Namespace) -> int:
    if args.docker_warm_pool is None:
        return int(args.warm_pool)
    print("warning: --docker-warm-pool is deprecated; use --warm-pool (it works for every --sandbox)",
          file=sys.stderr, flush=True)
    return max(int(args.warm_pool), int(args.docker_warm_pool))


# commands
def cmd_server(args: argparse.Namespace) -> int:
    from slfaas.faas.server import ServerConfig, SlfaasServer
    from slfaas.faas.server import is_loopback as server_is_loopback

    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        server = SlfaasServer(ServerConfig(
            data_dir=Path(args.data_dir), host=args.host, port=args.port, database_url=args.database_url,
            sandbox=args.sandbox, keep_alive_s=args.keep_alive_s, max_instances=args.max_instances,
            init_timeout_s=args.init_timeout_s, device=args.device, verify_interval_s=args.verify_interval_s,
            instance_gpu_mb=args.instance_gpu_mb, docker_image=args.docker_image,
            warm_pool=_warm_pool(args), s3_endpoint_url=args.s3_endpoint_url, auth=args.auth,
            credentials_file=Path(args.credentials) if args.credentials else None, insecure=args.insecure,
            auth_max_skew_s=args.auth_max_skew_s, prices_file=Path(args.prices) if args.prices else None,
            max_concurrent_invocations=args.max_concurrent_invocations, idle_timeout_s=args.idle_timeout_s,
            connection_limit=args.connection_limit))
    except OSError as exc:
        raise CliError(f"cannot start the server on {args.host}:{args.port}: {exc}")
    except (ValueError, SlfaasError) as exc:
        raise CliError(str(exc))

    def _stop(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    if server.verifier is not None:
        print(f"authentication: sigv4 ({len(server.verifier.secrets)} access key(s) from {args.credentials}; "
              f"unsigned or badly signed requests are refused)", flush=True)
    elif server_is_loopback(args.host):
        print(f"authentication: none; bound to loopback ({args.host}) only, so only this machine can reach it "
              f"(--auth sigv4 --credentials FILE to serve a network)", flush=True)
    else:
        print(f"WARNING: authentication: none on {args.host} (--insecure): anyone who reaches this port can "
              f"deploy and run code", flush=True)
    print(f"slfaas server listening on {server.url} (data dir {Path(args.data_dir).resolve()}, "
          f"sandbox {args.sandbox}, device {server.node.config.device}); Ctrl-C stops it", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    print("slfaas server stopped", flush=True)
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    zip_bytes = zip_adapter(Path(args.adapter))
    env: dict[str, str] = {}
    if args.base_model:
        env["SLFAAS_BASE_MODEL"] = args.base_model

    def deploy(client: Any) -> dict:
        params: dict[str, Any] = {"Timeout": args.timeout, "MemorySize": args.memory}
        if args.description is not None:
            params["Description"] = args.description
        if env:
            params["Environment"] = {"Variables": env}
        try:
            client.get_function(FunctionName=args.name)
            exists = True
        except client.exceptions.ResourceNotFoundException:
            exists = False
        if not exists:
            _progress(f"creating function {args.name} ({len(zip_bytes) / 1e6:.2f} MB code zip)")
            client.create_function(FunctionName=args.name, Runtime="slfaas-lora", Role=ROLE,
                                   Handler="slfaas.lora", Code={"ZipFile": zip_bytes}, **params)
        else:
            _progress(f"updating function {args.name} ({len(zip_bytes) / 1e6:.2f} MB code zip)")
            client.update_function_code(FunctionName=args.name, ZipFile=zip_bytes)
            client.get_waiter("function_updated_v2").wait(FunctionName=args.name,
                                                          WaiterConfig={"Delay": 1, "MaxAttempts": 600})
            client.update_function_configuration(FunctionName=args.name, **params)
        if args.no_wait:
            return client.get_function_configuration(FunctionName=args.name)
        _progress("waiting for the function to become Active (backbone loading on the node)...")
        t0 = time.time()
        while True:
            cfg = client.get_function_configuration(FunctionName=args.name)
            if cfg["State"] == "Failed" or cfg.get("LastUpdateStatus") == "Failed":
                raise CliError(f"function {args.name} failed: {cfg.get('StateReason') or cfg.get('LastUpdateStatusReason')}")
            if cfg["State"] == "Active" and cfg.get("LastUpdateStatus") == "Successful":
                return cfg
            if time.time() - t0 > args.wait_timeout_s:
                raise CliError(f"function {args.name} not Active after {args.wait_timeout_s} s (state {cfg['State']})")
            time.sleep(0.5)

    cfg = _boto_call(args.endpoint, deploy)
    print(f"{cfg['FunctionName']}\t{cfg['State']}\t{cfg['FunctionArn']}")
    return 0


def cmd_invoke(args: argparse.Namespace) -> int:
    if args.payload is not None and args.prompt is not None:
        raise CliError("give either --payload or --prompt, not both")
    if args.payload is not None:
        payload = args.payload.encode()
        try:
            json.loads(payload)
        except ValueError as exc:
            raise CliError(f"--payload is not valid JSON: {exc}")
    elif args.prompt is not None:
        event: dict[str, Any] = {"prompt": args.prompt, "max_tokens": args.max_tokens,
                                 "temperature": args.temperature}
        payload = json.dumps(event).encode()
    else:
        raise CliError("nothing to send: give --payload JSON or --prompt TEXT")
    if args.stream:
        return _invoke_stream(args, payload)
    resp = _boto_call(args.endpoint, lambda c: c.invoke(FunctionName=args.name, Payload=payload))
    body = resp["Payload"].read().decode("utf-8", "replace")
    if resp.get("FunctionError"):
        try:
            err = json.loads(body)
            raise CliError(f"function error ({err.get('errorType')}): {err.get('errorMessage')}")
        except ValueError:
            raise CliError(f"function error: {body}")
    if args.text:
        print(json.loads(body).get("text", ""))
    else:
        print(json.dumps(json.loads(body), indent=2) if body else "")
    return 0


def _invoke_stream(args: argparse.Namespace, payload: bytes) -> int:
    """InvokeWithResponseStream: print the text as it arrives."""
    def run(client: Any) -> dict:
        resp = client.invoke_with_response_stream(FunctionName=args.name, Payload=payload)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        end: dict = {}
        for event in resp["EventStream"]:
            if "PayloadChunk" in event:
                sys.stdout.write(decoder.decode(event["PayloadChunk"]["Payload"]))
                sys.stdout.flush()
            elif "InvokeComplete" in event:
                end = event["InvokeComplete"]
        sys.stdout.write(decoder.decode(b"", final=True) + "\n")
        return end

    end = _boto_call(args.endpoint, run)
    if end.get("ErrorCode"):
        raise CliError(f"function error ({end['ErrorCode']}): {end.get('ErrorDetails', '')}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    def all_functions(client: Any) -> list[dict]:
        out: list[dict] = []
        for page in client.get_paginator("list_functions").paginate():
            out.extend(page["Functions"])
        return out

    fns = _boto_call(args.endpoint, all_functions)
    if not fns:
        print("no functions deployed")
        return 0
    print(f"{'NAME':24} {'STATE':8} {'MEMORY':>6} {'TIMEOUT':>7}  LAST MODIFIED")
    for f in fns:
        print(f"{f['FunctionName']:24} {f['State']:8} {f['MemorySize']:>6} {f['Timeout']:>7}  {f['LastModified']}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    _boto_call(args.endpoint, lambda c: c.delete_function(FunctionName=args.name))
    print(f"deleted {args.name}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    text = api(args.endpoint, "GET", f"/slfaas/v1/functions/{args.name}/logs?max_bytes={args.max_bytes}")
    sys.stdout.write(text or "")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    if args.models_cmd == "add":
        m = api(args.endpoint, "POST", "/slfaas/v1/models", {"Name": args.name, "Path": str(Path(args.path).resolve())})
        print(f"{m['Name']}\t{m['Path']}")
    elif args.models_cmd == "remove":
        api(args.endpoint, "DELETE", f"/slfaas/v1/models/{args.name}")
        print(f"removed {args.name}")
    else:
        models = api(args.endpoint, "GET", "/slfaas/v1/models")["Models"]
        for m in models:
            print(f"{m['Name']}\t{m['Path']}")
        if not models:
            print("no models registered (slfaas models add NAME PATH)")
    return 0


def cmd_node_build_image(args: argparse.Namespace) -> int:
    from slfaas.gpu_node.sandboxes.docker import DockerUnavailable
    from slfaas.gpu_node.sandboxes.docker_image import ImageBuildError, build_dockerfile_image, build_local_image

    try:
        if args.check:
            from slfaas.gpu_node.sandboxes.docker_image import image_problem
            problem = image_problem(args.tag, args.suite)
            if problem:
                raise CliError(problem)
            print(f"{args.tag} is ready")
            return 0
        if args.dockerfile:
            build_args = dict(a.split("=", 1) for a in args.build_arg)
            if args.base_image:
                build_args["BASE_IMAGE"] = args.base_image
            build_dockerfile_image(Path(args.dockerfile), args.tag, build_args, args.build_network, progress=_progress)
        else:
            build_local_image(args.tag, suite=args.suite, mirror=args.mirror, cache_dir=Path(args.cache_dir),
                              rebuild=args.rebuild, progress=_progress)
    except (DockerUnavailable, ImageBuildError, OSError, ValueError) as exc:
        raise CliError(f"build-image: {exc}")
    print(args.tag)
    return 0


def cmd_node(args: argparse.Namespace) -> int:
    if args.node_cmd == "build-image":
        return cmd_node_build_image(args)
    if args.node_cmd == "verify":
        checks = api(args.endpoint, "POST", "/slfaas/v1/node/verify")["Checks"]
        if not checks:
            print("no backbone loaded")
        bad = 0
        for c in checks:
            if c["ok"]:
                print(f"OK        {c['model_path']} ({c['elapsed_ms']:.1f} ms)")
            else:
                bad += 1
                print(f"MISMATCH  {c['model_path']}: {len(c['bad_tensors'])} tensor(s) changed "
                      f"({', '.join(c['bad_tensors'][:4])}...); stopped {len(c['stopped_instances'])} "
                      f"instance(s), reloaded in {c['reload_s']:.2f} s")
        return 1 if bad else 0
    node = api(args.endpoint, "GET", "/slfaas/v1/node")
    print(f"node {node['NodeId']}  device {node['Device']}  sandbox {node['Sandbox']}")
    for b in node["Backbones"]:
        print(f"  backbone {b['model_path']}  {b['size_bytes'] / 1e9:.2f} GB  loaded in {b['load_s']:.2f} s "
              f"({b['load_gb_per_s']:.1f} GB/s)")
    gpu = node.get("Gpu")
    if gpu:
        print(f"  GPU {gpu['name']}: {gpu['used_mb']} / {gpu['total_mb']} MiB used, backbones {gpu['backbones_mb']} MiB")
    for i in node["Instances"]:
        print(f"  instance {i['instance_id']:34} {i['state']:8} pid {i['pid']}  invocations {i['invocations']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from slfaas.cli.demo import run_demo
    return run_demo(Path(args.data_dir), port=args.port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="slfaas", description="Serverless LoRA functions on one shared LLM backbone, "
                                "behind an AWS-Lambda-compatible API.")
    p.add_argument("--version", action="version", version=f"slfaas {__import__('slfaas').__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def client_cmd(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("--endpoint", default=endpoint_default(),
                        help="slfaas server URL (default: $SLFAAS_ENDPOINT or %(default)s)")
        return sp

    s = sub.add_parser("server", help="run the control plane and a local node agent",
                       description="Run the Lambda-compatible API and one local node agent in one process.")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    s.add_argument("--port", type=int, default=9000, help="port to bind, 0 for any free port (default %(default)s)")
    s.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="registry, code and logs (default %(default)s)")
    s.add_argument("--database-url", help="any SQLAlchemy URL for the registry (default: SQLite in the data dir)")
    s.add_argument("--sandbox", default="process", choices=["process", "docker"],
                   help="instance isolation: a process, or a Docker container per instance (default %(default)s)")
    s.add_argument("--docker-image", default=None,
                   help="with --sandbox docker: the runtime image (default slfaas/runtime:local, made by "
                        "`slfaas node build-image`)")
    s.add_argument("--warm-pool", type=int, default=0, metavar="N",
                   help="keep N generic runtimes pre-started (libraries imported; processes or containers, "
                        "as --sandbox says), each specialised into a function's instance on a cold start "
                        "(default %(default)s)")
    s.add_argument("--docker-warm-pool", type=int, default=None, metavar="N",
                   help="deprecated alias of --warm-pool")
    s.add_argument("--device", default="auto",
                   help="cpu, cuda, cuda:N, or auto = first GPU if present (default %(default)s)")
    s.add_argument("--verify-interval-s", type=float, default=None,
                   help="backbone integrity check period (default: 60 on CUDA; CPU backbones are sealed)")
    s.add_argument("--instance-gpu-mb", type=int, default=1536,
                   help="GPU memory reserved per instance for admission control (default %(default)s)")
    s.add_argument("--keep-alive-s", type=float, default=300.0, help="stop instances idle this long (default %(default)s)")
    s.add_argument("--max-instances", type=int, default=32, help="instances per node (default %(default)s)")
    s.add_argument("--init-timeout-s", type=float, default=300.0, help="cold-start limit (default %(default)s)")
    s.add_argument("--max-concurrent-invocations", type=int, default=64, metavar="N",
                   help="invocations in flight at once; beyond, 429 TooManyRequestsException with Retry-After "
                        "(default %(default)s)")
    s.add_argument("--idle-timeout-s", type=int, default=30,
                   help="close an HTTP connection idle this long (default %(default)s)")
    s.add_argument("--connection-limit", type=int, default=1000, metavar="N",
                   help="open HTTP connections at most (default %(default)s)")
    s.add_argument("--s3-endpoint-url", default=None,
                   help="S3 endpoint for function code given as S3Bucket/S3Key (default: boto3's own, which honours "
                        "AWS_ENDPOINT_URL_S3)")
    s.add_argument("--auth", default="none", choices=["none", "sigv4"],
                   help="sigv4: verify every request's AWS Signature V4 against --credentials; none (default): "
                        "no authentication, so only a loopback --host is allowed unless --insecure")
    s.add_argument("--credentials", metavar="FILE",
                   help="with --auth sigv4: accepted keys, AWS shared-credentials format "
                        "([name] aws_access_key_id=... aws_secret_access_key=...)")
    s.add_argument("--auth-max-skew-s", type=float, default=300.0,
                   help="with --auth sigv4: how far a request's signing date may be from now (default %(default)s, "
                        "AWS's 5 minutes); older requests, replays included, are refused as expired")
    s.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback --host without authentication (trusted networks only)")
    s.add_argument("--prices", metavar="FILE",
                   help="price sheet (TOML or YAML) over the built-in defaults; see docs/prices.example.toml")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    s.set_defaults(func=cmd_server)

    d = client_cmd("deploy", "create or update a function from a PEFT LoRA adapter directory")
    d.add_argument("name", help="function name")
    d.add_argument("--adapter", required=True, help="directory with adapter_config.json + adapter_model.safetensors")
    d.add_argument("--base-model", help="registered model name or model directory (default: the adapter's base)")
    d.add_argument("--timeout", type=int, default=60, help="invocation timeout in seconds (default %(default)s)")
    d.add_argument("--memory", type=int, default=2048, help="MemorySize in MB (default %(default)s)")
    d.add_argument("--description")
    d.add_argument("--no-wait", action="store_true", help="do not wait until the function is Active")
    d.add_argument("--wait-timeout-s", type=float, default=600.0)
    d.set_defaults(func=cmd_deploy)

    i = client_cmd("invoke", "invoke a function and print its result")
    i.add_argument("name")
    i.add_argument("--payload", help='event JSON, e.g. \'{"prompt": "hi", "max_tokens": 8}\'')
    i.add_argument("--prompt", help="shortcut for a payload with this prompt")
    i.add_argument("--max-tokens", type=int, default=32, help="with --prompt (default %(default)s)")
    i.add_argument("--temperature", type=float, default=0.0, help="with --prompt; 0 is greedy (default %(default)s)")
    i.add_argument("--text", action="store_true", help="print only the generated text")
    i.add_argument("--stream", action="store_true",
                   help="InvokeWithResponseStream: print the text as it is generated")
    i.set_defaults(func=cmd_invoke)

    ls = client_cmd("list", "list functions")
    ls.set_defaults(func=cmd_list)

    rm = client_cmd("delete", "delete a function")
    rm.add_argument("name")
    rm.set_defaults(func=cmd_delete)

    lg = client_cmd("logs", "print a function's instance logs (stdout/stderr, START/END/REPORT lines)")
    lg.add_argument("name")
    lg.add_argument("--max-bytes", type=int, default=256 * 1024, help="tail size (default %(default)s)")
    lg.set_defaults(func=cmd_logs)

    m = client_cmd("models", "manage named base models")
    msub = m.add_subparsers(dest="models_cmd", metavar="ACTION")
    # --endpoint is accepted before or after the action (SUPPRESS keeps the parent's value)
    endpoint_opt = argparse.ArgumentParser(add_help=False)
    endpoint_opt.add_argument("--endpoint", default=argparse.SUPPRESS, help="slfaas server URL")
    ma = msub.add_parser("add", parents=[endpoint_opt], help="register NAME for a local Hugging Face model directory")
    ma.add_argument("name")
    ma.add_argument("path")
    mr = msub.add_parser("remove", parents=[endpoint_opt], help="forget a registered model name")
    mr.add_argument("name")
    msub.add_parser("list", parents=[endpoint_opt], help="list registered models")
    m.set_defaults(func=cmd_models)

    nd = client_cmd("node", "inspect the node: backbones, instances, GPU memory; verify backbone integrity")
    nsub = nd.add_subparsers(dest="node_cmd", metavar="ACTION")
    nsub.add_parser("status", parents=[endpoint_opt], help="backbones, instances and GPU memory (default)")
    nsub.add_parser("verify", parents=[endpoint_opt],
                    help="check every backbone's bytes now; a mismatch stops its instances and reloads it")
    bi = nsub.add_parser(
        "build-image", help="build the Docker runtime image for --sandbox docker (no registry needed)",
        description="Without --dockerfile: debootstrap a minimal Debian of the host's release (cached under "
                    "--cache-dir), `docker import` it as a runtime image that runs the node's own Python mounted "
                    "read-only. With --dockerfile docker/Dockerfile.runtime: a self-contained image (needs a "
                    "registry / PyPI), e.g. --base-image nvidia/cuda:12.4.1-runtime-ubuntu22.04 for GPUs.")
    bi.add_argument("--tag", default="slfaas/runtime:local", help="image name (default %(default)s)")
    bi.add_argument("--suite", help="Debian release to debootstrap (default: the host's, else bookworm)")
    bi.add_argument("--mirror", help="Debian mirror (default $SLFAAS_DEBIAN_MIRROR or http://deb.debian.org/debian)")
    bi.add_argument("--cache-dir", default=str(Path("~/.cache/slfaas/images").expanduser()),
                    help="where the base rootfs tarball is kept (default %(default)s)")
    bi.add_argument("--rebuild", action="store_true", help="debootstrap again even if a cached rootfs exists")
    bi.add_argument("--check", action="store_true", help="only check that the image exists and is current (exit 1 if not)")
    bi.add_argument("--dockerfile", help="build this Dockerfile instead (context: the repository root)")
    bi.add_argument("--base-image", help="with --dockerfile: the BASE_IMAGE build argument")
    bi.add_argument("--build-arg", action="append", default=[], metavar="NAME=VALUE", help="with --dockerfile")
    bi.add_argument("--build-network", help="with --dockerfile: network for RUN steps (e.g. host)")
    nd.set_defaults(func=cmd_node)

    from slfaas.cli.cost import add_parser as add_cost_parser
    add_cost_parser(sub)

    dm = sub.add_parser("demo", help="make a tiny model and two adapters, serve, deploy and invoke them",
                        description="End-to-end demo on the embedded default: builds a tiny base model and two "
                                    "trained LoRA adapters (if absent), starts a server, deploys both through "
                                    "boto3, invokes them and prints the results.")
    dm.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR / "demo"), help="(default %(default)s)")
    dm.add_argument("--port", type=int, default=0, help="server port, 0 for a free one (default %(default)s)")
    dm.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"slfaas: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
