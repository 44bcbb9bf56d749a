"""``LogType=Tail``: the part of a function's log that belongs to one invocation. IO-free.

The node writes one log per function, ``<stamp> [<source>] <line>``, where the source is the
instance id for both the runtime's own output and the node's START/END/REPORT lines. An
instance runs one invocation at a time, so that instance's lines from ``START RequestId: X``
to ``REPORT RequestId: X`` are invocation X's log, as Lambda returns it.
"""
from __future__ import annotations

import base64
import re

TAIL_BYTES = 4096
# GET /slfaas/v1/functions/NAME/logs: the byte offset a follower asks for next (``?offset=``)
LOG_OFFSET_HEADER = "X-Slfaas-Log-Offset"
_LINE_RE = re.compile(r"^(\S+) \[([^\]]*)\] (.*)$")


def invocation_log(log_text: str, request_id: str, instance_id: str) -> str:
    """Invocation ``request_id``'s lines, without the node's timestamp/source prefix. An
    invocation whose cold start failed never STARTed: then the instance's own lines (its init
    output, e.g. a traceback) are what there is to show."""
    out: list[str] = []
    instance_lines: list[str] = []
    inside = False
    for raw in log_text.splitlines():
        m = _LINE_RE.match(raw)
        if m is None or m.group(2) != instance_id:
            continue
        line = m.group(3)
        instance_lines.append(line)
        if line.startswith(f"START RequestId: {request_id}"):
            inside = True
            out = []
        if inside:
            out.append(line)
            if line.startswith(f"REPORT RequestId: {request_id}"):
                break
    return "".join(line + "\n" for line in (out if inside else instance_lines))


def log_result_header(log: str, max_bytes: int = TAIL_BYTES) -> str:
    """``X-Amz-Log-Result``: base64 of the last ``max_bytes`` bytes of the log."""
    data = log.encode("utf-8", "replace")
    return base64.b64encode(data[-max_bytes:]).decode()
