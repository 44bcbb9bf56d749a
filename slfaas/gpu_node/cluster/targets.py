"""A ``NodeSet``'s provisioned-concurrency targets: per function version, its spec, how many
instances to hold, and the node holding them (one node per version)."""
from __future__ import annotations

import threading
from dataclasses import dataclass

from slfaas.gpu_node.types import FunctionSpec


@dataclass(frozen=True)
class Target:
    spec: FunctionSpec
    count: int
    node_id: str


class ProvisionedTargets:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._targets: dict[tuple[str, str], Target] = {}

    def get(self, function: FunctionSpec) -> Target | None:
        with self._lock:
            return self._targets.get((function.name, function.version))

    def put(self, function: FunctionSpec, count: int, node_id: str) -> None:
        with self._lock:
            self._targets[(function.name, function.version)] = Target(function, count, node_id)

    def drop(self, function: FunctionSpec) -> None:
        with self._lock:
            self._targets.pop((function.name, function.version), None)

    def on_node(self, node_id: str) -> list[Target]:
        with self._lock:
            return [t for t in self._targets.values() if t.node_id == node_id]

    def retire(self, function_name: str, keep_revision: str | None, version: str | None) -> None:
        """The nodes forget the targets of the revisions they retire: so does the set."""
        with self._lock:
            for key, t in list(self._targets.items()):
                if key[0] == function_name and (version is None or key[1] == version) \
                        and t.spec.revision_id != keep_revision:
                    del self._targets[key]
