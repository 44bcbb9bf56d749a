"""Function B's ``handler.py``: it attacks function A (and the node) from inside its sandbox.

The test tells it exactly where A lives on the host (``event["targets"]``): an attack then
fails because the sandbox refuses it, never because the attacker did not know where to look.
Each attack answers ``"ok: <what it got>"`` or ``"refused: <the error>"``; reads come first,
then the attacks that change or kill things. ``event["mb"]`` instead allocates that much
memory; ``event["escape"]`` leaves a setsid() grandchild behind that sleeps with that marker
in its command line.
"""
import glob
import hashlib
import os
import signal
import socket
import sqlite3
import sys
import urllib.request


def read_adapter(t):
    with open(os.path.join(t["a_code_dir"], "adapter_model.safetensors"), "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()[:16]


def read_log(t):
    with open(t["a_log"]) as fh:
        text = fh.read()
    return f"{len(text)} bytes" if text else None


def read_environ(t):
    with open(f"/proc/{t['a_pid']}/environ", "rb") as fh:
        env = fh.read()
    return "secret" if t["secret"].encode() in env else None


def scan_environ(t):
    """Any process whose environment holds A's secret."""
    for path in glob.glob("/proc/[0-9]*/environ"):
        try:
            with open(path, "rb") as fh:
                if t["secret"].encode() in fh.read():
                    return path
        except OSError:
            continue
    raise LookupError("no environment with the secret")


def read_registry(t):
    db = sqlite3.connect(f"file:{t['registry']}?mode=ro", uri=True)
    (env,) = db.execute("SELECT environment_json FROM functions WHERE name = ?", (t["a_name"],)).fetchone()
    return "secret" if t["secret"] in env else None


def read_memory(t):
    with open(f"/proc/{t['a_pid']}/maps") as fh:
        start = next(int(line.split("-")[0], 16) for line in fh if line.split()[1].startswith("r"))
    with open(f"/proc/{t['a_pid']}/mem", "rb") as fh:
        fh.seek(start)
        return f"{len(fh.read(64))} bytes"


def list_sockets(t):
    found = glob.glob("/tmp/slfaas-rt-*/*.sock")
    if not found:
        raise LookupError("no runtime socket visible")
    return f"{len(found)} sockets"


def connect_a_socket(t):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    s.connect(t["a_socket"])   # connected: it could take A's invocations from /next
    s.close()
    return "connected"


def rewrite_registry(t):
    db = sqlite3.connect(f"file:{t['registry']}?mode=rw", uri=True)
    db.execute("UPDATE functions SET description = 'pwned by B' WHERE name = ?", (t["a_name"],))
    db.commit()
    return "updated"


def plant_handler(t):
    with open(os.path.join(t["a_code_dir"], "handler.py"), "w") as fh:
        fh.write("def handler(event, context):\n    return {'text': 'pwned by B'}\n")
    return "written"


def kill_a(t):
    os.kill(int(t["a_pid"]), signal.SIGKILL)
    return "killed"


def delete_a(t):
    req = urllib.request.Request(f"{t['url']}/2015-03-31/functions/{t['a_name']}", method="DELETE")
    with urllib.request.urlopen(req, timeout=5) as resp:
        return f"HTTP {resp.status}"


ATTACKS = {f.__name__: f for f in (read_adapter, read_log, read_environ, scan_environ, read_registry,
                                   read_memory, list_sockets, connect_a_socket, rewrite_registry,
                                   plant_handler, kill_a, delete_a)}


def attempt(fn, targets):
    try:
        got = fn(targets)
    except Exception as exc:
        return f"refused: {type(exc).__name__}: {exc}"
    return f"ok: {got}" if got is not None else "refused: nothing found"


def escape(marker):
    """A grandchild in its own session, re-parented away from the runtime."""
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(3600)", marker])
        os._exit(0)
    os.wait()
    return "escaped"


def handler(event, context):
    if "mb" in event:
        block = bytearray(int(event["mb"]) << 20)   # zero-filled: every page touched
        return {"allocated_mb": len(block) >> 20}
    if "escape" in event:
        return {"escape": escape(event["escape"])}
    targets = event["targets"]
    return {name: attempt(ATTACKS[name], targets) for name in event["attacks"]}
