"""LogType=Tail: one invocation's lines out of a function's log (IO-free)."""
from __future__ import annotations

import base64

from slfaas.faas.log_tail import invocation_log, log_result_header

LOG = """\
2024-01-01T00:00:00.000Z [inst-a] START RequestId: r1 Version: $LATEST
2024-01-01T00:00:00.001Z [inst-a] hello from r1
2024-01-01T00:00:00.001Z [inst-b] START RequestId: r2 Version: 1
2024-01-01T00:00:00.002Z [inst-b] hello from r2
2024-01-01T00:00:00.003Z [inst-a] END RequestId: r1
2024-01-01T00:00:00.003Z [inst-a] REPORT RequestId: r1\tDuration: 1.00 ms\tBilled Duration: 2 ms\tMemory Size: 128 MB\tMax Memory Used: 50 MB
2024-01-01T00:00:00.004Z [inst-a] after r1
2024-01-01T00:00:00.005Z [inst-b] END RequestId: r2
2024-01-01T00:00:00.005Z [inst-b] REPORT RequestId: r2\tDuration: 4.00 ms\tBilled Duration: 5 ms\tMemory Size: 128 MB\tMax Memory Used: 51 MB
"""


def test_invocation_log_picks_its_instance_lines_between_start_and_report() -> None:
    out = invocation_log(LOG, "r1", "inst-a")
    assert out.splitlines() == [
        "START RequestId: r1 Version: $LATEST", "hello from r1", "END RequestId: r1",
        "REPORT RequestId: r1\tDuration: 1.00 ms\tBilled Duration: 2 ms\tMemory Size: 128 MB\tMax Memory Used: 50 MB"]
    assert "hello from r1" not in invocation_log(LOG, "r2", "inst-b")
    assert invocation_log(LOG, "r2", "inst-b").splitlines()[-1].startswith("REPORT RequestId: r2")
    assert invocation_log(LOG, "nope", "inst-c") == ""
    # Never started (its cold start failed): the instance's own lines.
    init_failed = "2024-01-01T00:00:00.000Z [inst-c] Traceback: boom\n" + LOG
    assert invocation_log(init_failed, "r9", "inst-c") == "Traceback: boom\n"


def test_log_result_header_is_base64_of_the_last_4k() -> None:
    text = "x" * 5000 + "\nREPORT RequestId: r\n"
    decoded = base64.b64decode(log_result_header(text))
    assert len(decoded) == 4096
    assert decoded.endswith(b"REPORT RequestId: r\n")
    assert base64.b64decode(log_result_header("short")) == b"short"
