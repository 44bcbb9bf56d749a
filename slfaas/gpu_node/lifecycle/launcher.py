"""Starts and stops instances: the backbone attached, the instance's own Runtime API socket,
its environment, its sandbox; a watcher that notices its exit; and everything undone at stop."""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from slfaas.gpu_node import events as ev
from slfaas.gpu_node.lifecycle.instance import Instance, InstanceState, error_payload
from slfaas.gpu_node.lifecycle.runtime_env import device_bound_mb, runtime_env
from slfaas.gpu_node.lifecycle.table import InstanceTable
from slfaas.gpu_node.logs import FunctionLogs
from slfaas.gpu_node.resources import private_backbone
from slfaas.gpu_node.resources.backbone import BackboneOwner
from slfaas.gpu_node.runtime_api import RuntimeApiServer
from slfaas.gpu_node.sandboxes.base import SandboxFactory, SandboxSpec
from slfaas.gpu_node.resources.adapters import AdapterTiers
from slfaas.runtime_contract import ENV_ADAPTER_FD, LOG_SYNC_MARKER

log = logging.getLogger(__name__)


class Launcher:
    def __init__(self, node_id: str, device: str, python: str, sandboxes: SandboxFactory, backbones: BackboneOwner,
                 table: InstanceTable, logs: FunctionLogs, publish: Callable[[ev.NodeEvent], object],
                 on_gone: Callable[[str], None] = lambda _iid: None, tiers: AdapterTiers | None = None,
                 backbone_mode: str = private_backbone.SHARED, device_bounds_mb: tuple[int, int] = (0, 0)):
        self.node_id = node_id
        self.device = device
        self.python = python
        self.sandboxes = sandboxes
        self.backbones = backbones
        self.table = table
        self.logs = logs
        self._publish = publish
        self._on_gone = on_gone
        self.tiers = tiers
        self.backbone_mode = backbone_mode
        self.device_bounds_mb = device_bounds_mb   # what a runtime's batches may hold: a function's own, a shared one
        # Unix socket paths are limited to 108 bytes, so they live in a short temp dir.
        self.socket_dir = Path(tempfile.mkdtemp(prefix="slfaas-rt-"))
        self._lock = threading.Lock()
        self._apis: dict[str, RuntimeApiServer] = {}

    def start(self, inst: Instance) -> None:
        """Start ``inst``'s sandbox (already in the table); a failure fails its init."""
        f = inst.function
        self._publish(ev.InstanceStarting(time.time(), inst.instance_id, f.name, f.version, f.memory_mb))
        try:
            self._start(inst)
        except BaseException as exc:
            log.exception("could not start instance for %s", inst.function.name)
            inst.init_failed(error_payload("Runtime.StartError", f"could not start the sandbox: {exc}"),
                             "Runtime.StartError")
            self.forget(inst)

    def _start(self, inst: Instance) -> None:
        function = inst.function
        attachment = private_backbone.attachment(self.backbone_mode, self.backbones, function.base_model_path,
                                                 self.socket_dir, inst.instance_id)
        socket_path = self.socket_dir / f"{inst.instance_id}.sock"
        api = RuntimeApiServer(socket_path, inst).start()
        with self._lock:
            self._apis[inst.instance_id] = api
        env = runtime_env(function, inst.instance_id, socket_path, self.device,
                          device_bound_mb(function, *self.device_bounds_mb))
        env.update(attachment.env)
        inherit, owned = attachment.inherit_fds, attachment.owned_fds
        adapter_fd = self.tiers.handout(function.code_dir) if self.tiers is not None else None
        if adapter_fd is not None:   # its adapter's weights from the host tier (a pre-warmed runtime copies them)
            env[ENV_ADAPTER_FD] = str(adapter_fd)
            inherit, owned = inherit + (adapter_fd,), owned + (adapter_fd,)
        attachment = replace(attachment, inherit_fds=inherit, owned_fds=owned)
        spec = SandboxSpec(
            instance_id=inst.instance_id, function_name=function.name, version=function.version,
            argv=(self.python, "-m", "slfaas.functions"), env=env, code_dir=function.code_dir,
            runtime_socket=socket_path, memory_mb=function.memory_mb, inherit_fds=attachment.inherit_fds,
            labels={"slfaas.node": self.node_id, "slfaas.function": function.name,
                    "slfaas.version": function.version, "slfaas.instance": inst.instance_id},
        )
        try:
            inst.sandbox = self.sandboxes.start(spec, self._log_sink(inst))
        finally:
            for fd in attachment.owned_fds:   # the sandbox holds its own copies now
                os.close(fd)
        log.info("started instance %s of %s (pid %s)", inst.instance_id, function.name, inst.sandbox.pid)
        threading.Thread(target=self._watch, args=(inst,), daemon=True, name=f"watch-{inst.instance_id}").start()

    def _log_sink(self, inst: Instance) -> Callable[[str], None]:
        """An instance's output into its function's log. The runtime's sync marker (written
        before each response) is not logged: it tells the instance its output is all in."""
        name, iid = inst.function.name, inst.instance_id

        def sink(line: str) -> None:
            head, marker, request_id = line.partition(LOG_SYNC_MARKER)
            if head or not marker:
                self.logs.append(name, iid, head)
            if marker:
                inst.log_synced(request_id.strip())
        return sink

    def _watch(self, inst: Instance) -> None:
        assert inst.sandbox is not None
        code = inst.sandbox.wait()
        was_stopping = inst.state in (InstanceState.STOPPING, InstanceState.STOPPED)
        inst.on_exit(code)
        if not was_stopping:
            log.warning("instance %s of %s exited unexpectedly (%s)", inst.instance_id, inst.function.name, code)
            self.logs.append(inst.function.name, inst.instance_id, f"instance exited unexpectedly (status {code})")
        self.forget(inst)

    def stop(self, inst: Instance) -> None:
        """Stop an instance (claimed for stopping, failed, or at shutdown): SIGTERM, then SIGKILL;
        its runtime hears of it from the signal, not from /next."""
        inst.begin_stop(wake=False)
        if inst.sandbox is not None:
            inst.sandbox.stop()
            inst.sandbox.wait(5)
        self.forget(inst)

    def kill(self, instances: list[Instance], reason: str) -> tuple[str, ...]:
        """Kill at once and wait for each (an in-flight call still gets its error)."""
        for inst in instances:
            inst.begin_stop(wake=False)
            if inst.sandbox is not None:
                inst.sandbox.kill()
            self.logs.append(inst.function.name, inst.instance_id, reason)
        for inst in instances:
            if inst.sandbox is not None:
                inst.sandbox.wait(10)
        return tuple(i.instance_id for i in instances)

    def forget(self, inst: Instance) -> None:
        inst.mark_stopped()
        inst.wake()
        self._publish(ev.InstanceGone(time.time(), inst.instance_id))
        self.table.remove(inst.instance_id)
        self._on_gone(inst.instance_id)
        with self._lock:
            api = self._apis.pop(inst.instance_id, None)
        if api is not None:
            api.close()
        (self.socket_dir / f"{inst.instance_id}.ipc").unlink(missing_ok=True)

    def close(self) -> None:
        shutil.rmtree(self.socket_dir, ignore_errors=True)
