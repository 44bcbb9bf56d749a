"""Billing: a node's device timeline (processor sharing), per-invocation usage records, price
sheets, reports, budgets and counterfactuals. It imports nothing of the node or the control
plane: the node's side turns its events into meter calls (``slfaas.gpu_node.metering``)."""
