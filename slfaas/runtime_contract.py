"""The contract between a node and the runtimes it starts: one spelling of every wire name.

Both sides import this module (standard library only): the node agent (``slfaas.gpu_node``)
to start runtimes and serve their Runtime API, the runtime (``slfaas.functions``) to find
its socket, backbone and code and to speak that API. Changing a name here changes it on
both sides at once.

The Runtime API is AWS Lambda's (paths, ``Lambda-Runtime-*`` headers, the streaming response
mode) plus a few ``Slfaas-*`` extensions, each marked below.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Mapping

# Environment a runtime is started with (the node sets these; a function may not).
ENV_RUNTIME_SOCKET = "SLFAAS_RUNTIME_SOCKET"    # the instance's own Runtime API Unix socket
ENV_INSTANCE_ID = "SLFAAS_INSTANCE_ID"
ENV_BASE_MODEL_DIR = "SLFAAS_BASE_MODEL_DIR"    # config + tokenizer of the base model
ENV_CODE_DIR = "SLFAAS_CODE_DIR"                # the function's extracted code zip
ENV_DEVICE = "SLFAAS_DEVICE"                    # "cpu" or "cuda:N"
ENV_NODE_PID = "SLFAAS_NODE_PID"                # a runtime whose parent is not this pid exits
# Where the backbone is borrowed from: exactly one of these.
ENV_BACKBONE_FD = "SLFAAS_BACKBONE_FD"          # an inherited read-only descriptor (sealed memfd)
ENV_BACKBONE_PATH = "SLFAAS_BACKBONE_PATH"      # a file, or a socket that hands the descriptor over
ENV_BACKBONE_IPC = "SLFAAS_BACKBONE_IPC"        # a file holding a CUDA IPC handle + tensor table
ENV_BACKBONE_VMM_FD = "SLFAAS_BACKBONE_VMM_FD"  # an inherited descriptor of the GPU arena (CUDA VMM) ...
ENV_BACKBONE_TABLE_FD = "SLFAAS_BACKBONE_TABLE_FD"  # ... and of its tensor table (a sealed memfd)
# A node run without backbone sharing (a baseline): the instance holds a private copy of the
# backbone, loaded from the checkpoint (the base model dir's weight files, then visible to it)
# or copied from the node's host image (SLFAAS_BACKBONE_FD/_PATH) into its own device memory.
ENV_BACKBONE_PRIVATE = "SLFAAS_BACKBONE_PRIVATE"
PRIVATE_CHECKPOINT = "checkpoint"
PRIVATE_COPY = "copy"
PRIVATE_BACKBONES = (PRIVATE_CHECKPOINT, PRIVATE_COPY)
ENV_POOL_SOCKET = "SLFAAS_POOL_SOCKET"          # a warm-pool runtime waits for its function here
ENV_PREWARM = "SLFAAS_PREWARM"                  # "1": a pool runtime pre-warms for its backbone (slots, kernels)
ENV_SLOT_RANK = "SLFAAS_SLOT_RANK"              # its LoRA slots' rank ...
ENV_SLOT_MODULES = "SLFAAS_SLOT_MODULES"        # ... and modules (comma-separated last names)
ENV_WARMUP_TOKENS = "SLFAAS_WARMUP_TOKENS"      # its warm-up prefill lengths (comma-separated)
ENV_DEVICE_ACTIVITY_FD = "SLFAAS_DEVICE_ACTIVITY_FD"  # pre-warming only: the node's running-invocations page (read-only)
ENV_ADAPTER_FD = "SLFAAS_ADAPTER_FD"            # the adapter's weights from a node tier (a sealed memfd)
ENV_GPU_TRIM_IDLE_S = "SLFAAS_GPU_TRIM_IDLE_S"  # idle seconds before a runtime frees cached GPU memory
# "1" (default): a pre-warmed runtime keeps its warm-up scratch (the allocator's cached blocks)
# until a function owns it, so that function's first prefill allocates nothing; "0": freed
# like any idle instance's, at a cost of device allocations on the cold start's first token.
ENV_PREWARM_KEEP_SCRATCH = "SLFAAS_PREWARM_KEEP_SCRATCH"
ENV_CUDNN_SDPA = "SLFAAS_CUDNN_SDPA"   # "1": a GPU runtime keeps torch's cuDNN attention (default off: per-length set-up)
ENV_RUNTIME_CPU_THREADS = "SLFAAS_RUNTIME_CPU_THREADS"  # a GPU runtime's torch CPU threads (default 2)
GPU_RUNTIME_CPU_THREADS = 2   # its CPU work is tokenising and copying: many runtimes share a host's cores
# How many invocations the node may hand this runtime at once (its function's validated
# setting of the same name; 1: one at a time). Above 1 the runtime takes that many through
# concurrent /next calls and batches their generations.
ENV_MAX_BATCH_SIZE = "SLFAAS_MAX_BATCH_SIZE"
MAX_BATCH_SIZE_LIMIT = 64
# "1": this runtime is the platform's shared runtime of its backbone: it serves several
# functions (those that opted into shared execution, a setting of the same name), loads each
# one's adapter from the node (PATH_ADAPTER) and batches their requests together. Set by the
# node for every runtime ("0" for a function's own), never by a function.
ENV_SHARED_EXECUTION = "SLFAAS_SHARED_EXECUTION"
# The device memory (MiB) a GPU runtime may hold beside the borrowed backbone: the node's
# --instance-gpu-mb, which its placement counts on. A batching runtime (SLFAAS_MAX_BATCH_SIZE
# above 1, or a shared runtime) admits requests only while their cache and activations fit
# under it and holds its allocator to it, so runtimes on one device cannot all take the same
# free memory at once. Set by the node, never by a function; unset (CPU): the device's free
# memory is the only bound.
ENV_INSTANCE_DEVICE_MB = "SLFAAS_INSTANCE_DEVICE_MB"
ENV_HANDLER = "_HANDLER"
ENV_FUNCTION_NAME = "AWS_LAMBDA_FUNCTION_NAME"
ENV_FUNCTION_VERSION = "AWS_LAMBDA_FUNCTION_VERSION"
ENV_FUNCTION_MEMORY_MB = "AWS_LAMBDA_FUNCTION_MEMORY_SIZE"
ENV_TASK_ROOT = "LAMBDA_TASK_ROOT"

# Runtime API paths (relative to the socket's HTTP root)
API_PREFIX = "/2018-06-01/runtime"
PATH_NEXT = f"{API_PREFIX}/invocation/next"
PATH_INIT_ERROR = f"{API_PREFIX}/init/error"
PATH_INIT_REPORT = f"{API_PREFIX}/slfaas/init-report"   # slfaas: init phase timings, adapter bytes
PATH_ADAPTER = f"{API_PREFIX}/slfaas/adapter/"   # slfaas: + adapter id: a shared runtime fetches an adapter


def adapter_path(adapter_id: str) -> str:
    return PATH_ADAPTER + adapter_id


def invocation_path(request_id: str, kind: str) -> str:
    """``kind``: "response" or "error"."""
    return f"{API_PREFIX}/invocation/{request_id}/{kind}"


# Headers of /next (node → runtime)
H_REQUEST_ID = "Lambda-Runtime-Aws-Request-Id"
H_DEADLINE_MS = "Lambda-Runtime-Deadline-Ms"
H_FUNCTION_ARN = "Lambda-Runtime-Invoked-Function-Arn"
H_TRACE_ID = "Lambda-Runtime-Trace-Id"
H_CLIENT_CONTEXT = "Lambda-Runtime-Client-Context"
H_COLD_START = "Slfaas-Cold-Start"          # slfaas: "1" for the invocation that caused a cold start
H_QUEUE_MS = "Slfaas-Queue-Ms"              # slfaas: time from the node's dispatch to delivery
H_RESPONSE_MODE = "Slfaas-Response-Mode"    # slfaas: "streaming" when the caller reads a stream
H_ADAPTER_ID = "Slfaas-Adapter-Id"          # slfaas, shared runtimes: the adapter this invocation runs with
H_ADAPTER_CONFIG = "Slfaas-Adapter-Config"  # slfaas: PATH_ADAPTER's answer: adapter_config.json (the body: weights)
# Headers and trailers of responses (runtime → node)
H_FUNCTION_RESPONSE_MODE = "Lambda-Runtime-Function-Response-Mode"
H_ERROR_TYPE = "Lambda-Runtime-Function-Error-Type"
H_ERROR_BODY = "Lambda-Runtime-Function-Error-Body"     # a trailer: base64 of the error document
# slfaas: the runtime's JSON account of one invocation: a streamed response's trailer, a
# buffered response's header; keys in RESULT_METRIC_KEYS
H_RESULT_METRICS = "Slfaas-Result-Metrics"
H_DEVICE_MS = "Slfaas-Device-Ms"             # slfaas: the runtime's device time for one invocation
STREAMING = "streaming"
# What the runtime measured of one invocation (H_RESULT_METRICS): device time (its token
# share of every forward pass it was in), those passes' whole device time, the most
# invocations one of its passes held, its first token's latency; plus a stream's usage.
RESULT_METRIC_KEYS = ("device_ms", "batch_device_ms", "batch_size", "ttft_ms", "prompt_tokens",
                      "completion_tokens", "finish_reason")


def instance_device_bytes(env: Mapping[str, str]) -> int | None:
    """The runtime's device-memory bound from its environment: None when unset or not a
    positive number."""
    try:
        value = int(env.get(ENV_INSTANCE_DEVICE_MB, "0"))
    except ValueError:
        return None
    return value * 1024 * 1024 if value > 0 else None


def max_batch_size(env: Mapping[str, str]) -> int:
    """The runtime's capacity from its environment: 1 when unset or not a number."""
    try:
        value = int(env.get(ENV_MAX_BATCH_SIZE, "1"))
    except ValueError:
        return 1
    return min(max(value, 1), MAX_BATCH_SIZE_LIMIT)

# slfaas: the runtime writes this + the request id as a line of its output just before it posts
# an invocation's response or error; the node writes END/REPORT only once it has read that
# line, so the function's log (and LogType=Tail) holds everything the invocation printed.
LOG_SYNC_MARKER = "\x1eslfaas-log-sync "

MAX_RESPONSE_BYTES = 6 * 1024 * 1024 + 1024          # Lambda's buffered response limit
MAX_STREAMED_RESPONSE_BYTES = 200 * 1024 * 1024      # Lambda's limit for streamed responses

# Warm-pool specialisation: one message on the pool socket, a u32 length + JSON body, with
# descriptors attached (SCM_RIGHTS): first the backbone's (the body's "fd_env" names the
# environment variable that carries each one's number), then the function's files.
SPEC_HEADER = struct.Struct("<I")
BACKBONE_FD_ENV = (ENV_BACKBONE_FD, ENV_BACKBONE_VMM_FD, ENV_BACKBONE_TABLE_FD)
HANDOVER_FD_ENV = (*BACKBONE_FD_ENV, ENV_ADAPTER_FD)   # descriptors a specialisation message may carry
MAX_FDS = 250  # SCM_MAX_FD is 253


@dataclass(frozen=True)
class Delivery:
    """One invocation as ``/next`` hands it to the runtime (body + headers)."""

    request_id: str
    payload: bytes
    deadline_ms: int
    function_arn: str
    client_context: str | None
    cold_start: bool
    queue_ms: float
    response_stream: bool = False   # the caller reads the response as a stream of chunks
    adapter_id: str | None = None   # a shared runtime's: whose adapter the invocation runs with

    def headers(self) -> dict[str, str]:
        out = {
            "Content-Type": "application/json",
            H_REQUEST_ID: self.request_id,
            H_DEADLINE_MS: str(self.deadline_ms),
            H_FUNCTION_ARN: self.function_arn,
            H_TRACE_ID: f"Root=1-{self.request_id[:8]}",
            H_COLD_START: "1" if self.cold_start else "0",
            H_QUEUE_MS: f"{self.queue_ms:.3f}",
        }
        if self.client_context:
            out[H_CLIENT_CONTEXT] = self.client_context
        if self.response_stream:
            out[H_RESPONSE_MODE] = STREAMING
        if self.adapter_id:
            out[H_ADAPTER_ID] = self.adapter_id
        return out

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], payload: bytes) -> "Delivery":
        """``headers`` with lower-case names, as the runtime's HTTP client gives them."""
        return cls(
            request_id=headers[H_REQUEST_ID.lower()],
            payload=payload,
            deadline_ms=int(headers.get(H_DEADLINE_MS.lower(), "0")),
            function_arn=headers.get(H_FUNCTION_ARN.lower(), ""),
            client_context=headers.get(H_CLIENT_CONTEXT.lower()),
            cold_start=headers.get(H_COLD_START.lower()) == "1",
            queue_ms=float(headers.get(H_QUEUE_MS.lower(), "0")),
            response_stream=headers.get(H_RESPONSE_MODE.lower()) == STREAMING,
            adapter_id=headers.get(H_ADAPTER_ID.lower()) or None,
        )
