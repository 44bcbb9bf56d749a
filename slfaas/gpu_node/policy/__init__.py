"""Pure policies: decisions as functions of a snapshot (the clock value passed in).

Nothing here imports torch, threading, time or does IO; the node's services (the mechanism)
build the snapshot, ask, and apply the decision. Unit tests drive them with plain values.
"""
