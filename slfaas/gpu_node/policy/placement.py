"""Where one request runs: a warm instance of its function, a new instance (evicting idle ones
of other functions if the node is full), or nowhere (the caller gets a 429)."""
from __future__ import annotations

from dataclasses import dataclass

from slfaas.gpu_node.policy.offload import Resident, choose_offload
from slfaas.gpu_node.policy.view import InstanceView, NodeSnapshot, PoolKey


@dataclass(frozen=True)
class Reuse:
    instance_id: str


@dataclass(frozen=True)
class Start:
    evict: tuple[str, ...] = ()   # idle instances to stop first, to make room


@dataclass(frozen=True)
class Refuse:
    reason: str                   # AWS's Reason of a TooManyRequestsException
    message: str


Placement = Reuse | Start | Refuse


def _evictable(snapshot: NodeSnapshot, key: PoolKey, taken: set[str]) -> list[InstanceView]:
    """Idle instances, least recently used first, that no queued request is about to use;
    never a provisioned one (held on purpose, whatever its last use)."""
    idle = [i for i in snapshot.instances if i.state == "IDLE" and i.instance_id not in taken and not i.provisioned
            and (i.pool_key != key or i.stale) and (i.stale or i.pool_key not in snapshot.waiting_keys)]
    return sorted(idle, key=lambda i: (not i.stale, i.last_used_s, i.instance_id))


def _why_kept(live: list[InstanceView]) -> str:
    held = sum(1 for i in live if i.provisioned and i.state == "IDLE")
    return "all busy" if not held else f"all busy or provisioned ({held} held idle for provisioned concurrency)"


def place(snapshot: NodeSnapshot, key: PoolKey) -> Placement:
    """Warm reuse first (the most recently used instance with room: its caches are warmest);
    else start one, within the instance limit and (on a GPU) the free device memory, evicting
    idle instances of other functions when that makes room: at the instance limit the least
    recently used, for memory the lowest-value ones (``offload.choose_offload``)."""
    warm = [i for i in snapshot.instances if i.pool_key == key and i.has_room]
    if warm:
        return Reuse(max(warm, key=lambda i: (i.inflight == 0, i.last_used_s, i.instance_id)).instance_id)
    return start_one(snapshot, key)


def start_one(snapshot: NodeSnapshot, key: PoolKey, may_evict: bool = True) -> Start | Refuse:
    """Room for one more instance of ``key`` (a request's cold start, or an instance started
    ahead of requests: pre-warmed or provisioned), evicting idle instances of other functions
    when ``may_evict`` and that makes room."""
    live = [i for i in snapshot.instances if i.alive]
    candidates = _evictable(snapshot, key, set()) if may_evict else []
    evict: list[str] = []
    if len(live) >= snapshot.max_instances:
        if not candidates:
            return Refuse("ConcurrentInvocationLimitExceeded",
                          f"Node is at its limit of {snapshot.max_instances} instances, {_why_kept(live)}")
        evict.append(candidates.pop(0).instance_id)
    gpu = snapshot.gpu
    if gpu is not None and not evict:
        starting = sum(1 for i in live if i.state == "STARTING")
        need_mb = gpu.instance_mb - (gpu.free_mb - starting * gpu.instance_mb)
        freed = choose_offload((Resident(i.instance_id, "instance", i.gpu_mb or gpu.instance_mb, i.rate_per_s,
                                         i.reload_s, i.last_used_s, stale=i.stale) for i in candidates), need_mb)
        if freed is None:
            return Refuse("InsufficientGpuMemory",
                          f"Not enough GPU memory for another instance: {gpu.free_mb / 1024:.1f} GiB free, "
                          f"{starting} instance(s) starting, each may need {gpu.instance_mb / 1024:.1f} GiB; "
                          f"the {len(candidates)} idle instance(s) that may be stopped would not make room "
                          f"({len(live)} instance(s): {_why_kept(live)})")
        evict.extend(freed)
    return Start(tuple(evict))
