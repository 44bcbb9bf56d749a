"""Finding a node's runtime processes from a test (the host's /proc view)."""
from __future__ import annotations

from pathlib import Path


def pool_runtimes(ancestor_pid: int) -> set[int]:
    """Live pool runtimes (``python -m slfaas.functions.prewarm`` itself, not a sandbox's bwrap
    or shell around it) that descend from ``ancestor_pid``: generic runtimes not (yet)
    specialised, or specialised ones (the same process)."""
    parents, found = {}, set()
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit():
                stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(d.name)] = int(stat[1])
                if stat[0] != "Z" and (d / "cmdline").read_bytes().split(b"\0")[1:3] == \
                        [b"-m", b"slfaas.functions.prewarm"]:
                    found.add(int(d.name))
        except (OSError, IndexError):
            continue

    def descends(p: int) -> bool:
        while p > 1:
            p = parents.get(p, 0)
            if p == ancestor_pid:
                return True
        return False
    return {p for p in found if descends(p)}
