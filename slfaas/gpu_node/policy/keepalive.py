"""Which idle instances have outlived their keep-alive."""
from __future__ import annotations

from slfaas.gpu_node.policy.view import NodeSnapshot


def expired(snapshot: NodeSnapshot, keep_alive_s: float) -> tuple[str, ...]:
    """Idle instances unused for longer than ``keep_alive_s`` (a fixed TTL), oldest first."""
    out = [i for i in snapshot.instances if i.state == "IDLE" and snapshot.now_s - i.last_used_s > keep_alive_s]
    return tuple(i.instance_id for i in sorted(out, key=lambda i: (i.last_used_s, i.instance_id)))
