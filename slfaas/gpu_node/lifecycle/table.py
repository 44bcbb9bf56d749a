"""The node's live instances, and which revisions are retired (their instances are stale:
they finish what they run and are never given more)."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

from slfaas.gpu_node.lifecycle.instance import Instance
from slfaas.gpu_node.policy.view import GpuView, InstanceView, NodeSnapshot, PoolKey
from slfaas.gpu_node.types import InstanceInfo


Valuer = Callable[[Instance], tuple[float | None, float]]   # (device MB, arrivals per second)


class InstanceTable:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._instances: dict[str, Instance] = {}
        # Set by retire(): instances of a retired (name, revision) are stale, and so are those of a
        # (name, version) whose current revision is another one (started after the retire).
        self._retired: set[PoolKey] = set()
        self._current_revision: dict[tuple[str, str], str | None] = {}

    def add(self, inst: Instance) -> None:
        with self._lock:
            self._instances[inst.instance_id] = inst

    def remove(self, instance_id: str) -> None:
        with self._lock:
            self._instances.pop(instance_id, None)

    def get(self, instance_id: str) -> Instance | None:
        with self._lock:
            return self._instances.get(instance_id)

    def all(self) -> list[Instance]:
        with self._lock:
            return list(self._instances.values())

    def holding(self, request_id: str) -> Instance | None:
        """The instance a request is reserved on."""
        return next((i for i in self.all() if i.holds(request_id)), None)

    def borrowers(self, model_path: Path) -> list[Instance]:
        return [i for i in self.all() if Path(i.function.base_model_path).resolve() == model_path]

    def retire(self, function_name: str, keep_revision: str | None, version: str | None) -> list[Instance]:
        """Mark the function's instances (of ``version`` only, when given) stale, except those of
        ``keep_revision``; returns them."""
        with self._lock:
            victims = [i for i in self._instances.values() if i.function.name == function_name
                       and (version is None or i.function.version == version)
                       and i.function.revision_id != keep_revision]
            self._retired.update(i.function.pool_key for i in victims)
            if version is None:
                for key in [k for k in self._current_revision if k[0] == function_name]:
                    del self._current_revision[key]
            else:
                self._current_revision[(function_name, version)] = keep_revision
        return victims

    def _stale(self, inst: Instance) -> bool:
        """Caller holds ``_lock``."""
        f = inst.function
        if f.pool_key in self._retired:
            return True
        key = (f.name, f.version)
        return key in self._current_revision and self._current_revision[key] != f.revision_id

    def stale(self, inst: Instance) -> bool:
        with self._lock:
            return self._stale(inst)

    def snapshot(self, now_s: float, max_instances: int, gpu: GpuView | None,
                 waiting_keys: frozenset[PoolKey] = frozenset(), value: Valuer | None = None) -> NodeSnapshot:
        """``value``: an instance's measured device MB and its function's arrival rate (what
        offloading weighs), where the node knows them."""
        with self._lock:
            instances = list(self._instances.values())
            stale = [self._stale(i) for i in instances]
        views = []
        for i, old in zip(instances, stale):
            mb, rate = value(i) if value is not None else (None, 0.0)
            views.append(InstanceView(i.instance_id, i.function.pool_key, i.state.value, i.last_used_ts, i.inflight,
                                      i.capacity, old, mb, rate, (i.init_duration_ms or 0.0) / 1000,
                                      provisioned=i.provisioned))
        return NodeSnapshot(now_s, tuple(views), max_instances, gpu, waiting_keys)

    def infos(self, gpu_mb: dict[str, float] | None = None) -> tuple[InstanceInfo, ...]:
        gpu_mb = gpu_mb or {}
        return tuple(InstanceInfo(i.instance_id, i.function.name, i.function.version, i.function.revision_id,
                                  i.state.value, i.sandbox.pid if i.sandbox else None, i.started_ts,
                                  i.last_used_ts, i.invocations, i.init_facts.get("adapter_bytes"),
                                  dict(i.init_facts), gpu_mb.get(i.instance_id), i.provisioned) for i in self.all())
