"""Pure policies of the node: functions of a frozen snapshot and a clock value passed in, to a
frozen decision. Nothing here imports torch, threads, clocks or does IO, so every policy is
unit-tested without them; the node's services apply what these decide."""
