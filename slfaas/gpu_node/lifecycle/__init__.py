"""Instances from start to stop: the state machine, the table of live instances, the launcher
that starts and stops their sandboxes, and the keep-alive reaper."""
