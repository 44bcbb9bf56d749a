"""Several nodes' reports as one ``NodeInfo`` (a ``NodeSet``'s ``describe``)."""
from __future__ import annotations

from dataclasses import replace

from slfaas.gpu_node.types import NodeInfo


def aggregate(set_id: str, infos: list[NodeInfo]) -> NodeInfo:
    """The nodes as one: a single live node reports as itself (as before there were several)."""
    live = [i for i in infos if i.state == "alive"]
    if len(infos) == 1 and live:
        return replace(live[0], nodes=tuple(infos))
    return NodeInfo(set_id, ",".join(i.device for i in live), live[0].sandbox if live else "",
                    sum(i.max_instances for i in live), sum(i.warm_pool_target for i in live),
                    sum(i.warm_pool_held for i in live), tuple(b for i in live for b in i.backbones),
                    tuple(x for i in live for x in i.instances), None, tuple(p for i in live for p in i.pools),
                    tuple(t for i in live for t in i.tiers), None, nodes=tuple(infos),
                    concurrency_limit=(sum(i.max_concurrency for i in live)
                                       if any(i.concurrency_limit is not None for i in live) else None),
                    provisioned=tuple(p for i in live for p in i.provisioned),
                    keep_alive_policy=live[0].keep_alive_policy if live else "fixed")
