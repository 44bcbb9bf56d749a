"""The --from-host image recipe without Docker: which of a host's files go into the tar stream,
what is always left out (secrets), the container user and mount points, and that the host's own
files are only read. A fake host tree stands in for / (the Docker test builds from the real one)."""
from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from slfaas.gpu_node.sandboxes.docker import CONTAINER_UID
from slfaas.gpu_node.sandboxes.host_image import (DEFAULT_EXCLUDES, SECRET_EXCLUDES, Selection, StreamStats,
                                                  default_selection, host_tar_stream, normalize_pattern,
                                                  tweak_group, tweak_passwd)
from slfaas.gpu_node.sandboxes.host_python import host_python_paths

PASSWD = "root:x:0:0:root:/root:/bin/bash\nslfaas:x:5000:5000::/home/slfaas:/bin/sh\nold:x:10001:10001::/:/bin/sh\n"
GROUP = "root:x:0:\nslfaas:x:5000:\nold:x:10001:\n"
SECRETS = ("etc/shadow", "etc/shadow-", "etc/gshadow", "etc/ssh/ssh_host_ed25519_key",
           "etc/ssh/ssh_host_rsa_key.pub", "etc/ssl/private/server.key", "etc/docker/key.json",
           "etc/apt/auth.conf.d/repo.conf", "etc/pip.conf", "etc/sudoers", "etc/machine-id")


def _write(root: Path, rel: str, text: str = "x") -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A small host: merged /usr except a real /sbin, secrets, toolchains, a Python install root."""
    root = tmp_path / "host"
    _write(root, "etc/passwd", PASSWD)
    _write(root, "etc/group", GROUP)
    _write(root, "etc/ssl/certs/ca.pem", "CA")
    _write(root, "etc/ssh/ssh_config", "Host *")
    for rel in SECRETS:
        _write(root, rel, "SECRET")
    os.mkfifo(root / "etc/initctl")
    _write(root, "etc/wpa_supplicant.conf", "SECRET").chmod(0o600)  # no rule names it: hidden from others
    (root / "etc/vault").mkdir()
    _write(root, "etc/vault/token", "SECRET")
    (root / "etc/vault").chmod(0o700)
    _write(root, "usr/bin/su", "#!su").chmod(0o4755)
    _write(root, "usr/bin/true", "#!true")
    _write(root, "usr/bin/docker", "engine")
    _write(root, "usr/lib/x86_64-linux-gnu/libc.so.6", "libc")
    _write(root, "usr/lib/x86_64-linux-gnu/libc.a", "static")
    _write(root, "usr/lib/x86_64-linux-gnu/dri/radeon_dri.so", "mesa")
    _write(root, "usr/lib/x86_64-linux-gnu/libfoo.so.1", "foo")
    _write(root, "usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15", "driver")
    _write(root, "usr/lib/x86_64-linux-gnu/libnvidia-ml.so.550.54.15", "driver")
    _write(root, "usr/lib/jvm/java-17/lib/libjvm.so", "jvm")
    _write(root, "usr/lib/llvm-14/bin/clang", "clang")
    _write(root, "usr/lib/gcc/x86_64-linux-gnu/12/cc1", "cc1")
    _write(root, "usr/lib/pyroot/bin/python3", "python")  # stands in for the node's Python install root
    os.link(root / "usr/lib/x86_64-linux-gnu/libc.so.6", root / "usr/lib/x86_64-linux-gnu/libc-2.36.so")
    (root / "usr/lib64").mkdir()
    os.symlink("../lib/x86_64-linux-gnu/libc.so.6", root / "usr/lib64/ld-linux-x86-64.so.2")
    for link in ("bin", "lib", "lib64"):
        os.symlink(f"usr/{link}", root / link)
    _write(root, "sbin/ldconfig", "ldconfig")  # not merged: a real directory
    return root


def _members(root: Path, selection: Selection, stats: StreamStats | None = None) -> dict[str, tarfile.TarInfo]:
    data = b"".join(host_tar_stream(root, selection, progress=lambda _: None, stats=stats))
    assert len(data) % tarfile.BLOCKSIZE == 0
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: m for m in tar.getmembers()}


def _read(root: Path, selection: Selection, name: str) -> str:
    data = b"".join(host_tar_stream(root, selection, progress=lambda _: None))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        fh = tar.extractfile(name)
        assert fh is not None
        return fh.read().decode()


def test_selection_keeps_the_runtime_and_leaves_out_toolchains_and_the_python_root(host: Path) -> None:
    members = _members(host, Selection(DEFAULT_EXCLUDES + ("usr/lib/*/libfoo*",), skip_roots=("usr/lib/pyroot",)))
    for kept in ("etc/ssl/certs/ca.pem", "etc/ssh/ssh_config", "usr/bin/true", "usr/lib/x86_64-linux-gnu/libc.so.6",
                 "sbin/ldconfig"):
        assert members[kept].isfile() or members[kept].islnk(), kept
    for left_out in ("usr/bin/docker", "usr/lib/x86_64-linux-gnu/libc.a", "usr/lib/x86_64-linux-gnu/dri",
                     "usr/lib/jvm", "usr/lib/llvm-14", "usr/lib/gcc", "usr/lib/pyroot",
                     "usr/lib/x86_64-linux-gnu/libfoo.so.1", "etc/initctl",
                     "usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15",
                     "usr/lib/x86_64-linux-gnu/libnvidia-ml.so.550.54.15"):
        assert not any(n == left_out or n.startswith(left_out + "/") for n in members), left_out
    # Links stay links (the merged-/usr top level, the loader), a hard link points at a member.
    assert {n: members[n].linkname for n in ("bin", "lib", "lib64")} == {
        "bin": "usr/bin", "lib": "usr/lib", "lib64": "usr/lib64"}
    assert members["sbin"].isdir()
    assert members["usr/lib64/ld-linux-x86-64.so.2"].issym()
    hard = [m for m in members.values() if m.islnk()]
    assert len(hard) == 1 and hard[0].linkname in members


def test_secrets_are_never_in_the_stream_even_without_default_excludes(host: Path) -> None:
    members = _members(host, Selection(excludes=()))
    assert "usr/lib/jvm/java-17/lib/libjvm.so" in members  # no default excludes: toolchains are in
    for rel in SECRETS:
        assert rel not in members, rel
    assert "etc/ssl/private" not in members and "etc/docker" not in members
    assert not any(n.startswith(("etc/wpa_supplicant.conf", "etc/vault")) for n in members)
    assert stat.S_IMODE(members["usr/bin/su"].mode) == 0o755  # setuid dropped
    assert b"SECRET" not in b"".join(host_tar_stream(host, Selection(excludes=()), progress=lambda _: None))


def test_the_container_user_and_mount_points_are_added_to_the_stream_not_to_the_host(host: Path) -> None:
    before = {rel: (host / rel).read_bytes() for rel in ("etc/passwd", "etc/group")}
    members = _members(host, Selection())
    passwd = _read(host, Selection(), "etc/passwd").splitlines()
    group = _read(host, Selection(), "etc/group").splitlines()
    assert passwd[0] == "root:x:0:0:root:/root:/bin/bash"
    assert [ln for ln in passwd if ln.startswith("slfaas:") or f":{CONTAINER_UID}:" in ln] == [
        f"slfaas:x:{CONTAINER_UID}:{CONTAINER_UID}:slfaas function:/tmp:/usr/sbin/nologin"]
    assert [ln for ln in group if ln.startswith("slfaas:") or f":{CONTAINER_UID}:" in ln] == [
        f"slfaas:x:{CONTAINER_UID}:"]
    assert members["etc/passwd"].size == len("\n".join(passwd)) + 1
    for d in ("var/task", "opt/slfaas/model", "run/slfaas", "root"):
        assert members[d].isdir() and stat.S_IMODE(members[d].mode) == 0o755, d
    assert members["tmp"].isdir() and stat.S_IMODE(members["tmp"].mode) == 0o1777
    assert {rel: (host / rel).read_bytes() for rel in before} == before  # the host's files: only read


def test_the_stream_extracts_to_the_host_files_and_counts_what_it_wrote(host: Path, tmp_path: Path) -> None:
    stats = StreamStats()
    data = b"".join(host_tar_stream(host, Selection(), progress=lambda _: None, stats=stats))
    out = tmp_path / "out"
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(out, filter="tar")
    assert (out / "usr/lib/x86_64-linux-gnu/libc-2.36.so").read_text() == "libc"
    assert (out / "sbin/ldconfig").read_text() == "ldconfig"
    assert os.readlink(out / "bin") == "usr/bin"
    assert stats.members > 10 and stats.excluded >= len(SECRETS)


def test_progress_says_each_top_directory(host: Path) -> None:
    lines: list[str] = []
    for _ in host_tar_stream(host, Selection(), progress=lines.append):
        pass
    assert [ln.split(":")[0].strip() for ln in lines] == ["/sbin", "/etc", "/usr/bin", "/usr/lib", "/usr/lib64"]


def test_passwd_and_group_tweaks_are_idempotent() -> None:
    once = tweak_passwd(PASSWD)
    assert tweak_passwd(once) == once
    assert tweak_group(tweak_group(GROUP)) == tweak_group(GROUP)
    assert "old:" not in once and "root:x:0:0" in once


@pytest.mark.parametrize("pattern", ["", "/", "*", ".", "usr/../etc/shadow"])
def test_bad_exclude_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(ValueError, match="--exclude"):
        normalize_pattern(pattern)


def test_default_selection_adds_excludes_and_leaves_out_the_nodes_python() -> None:
    sel = default_selection(("/usr/lib/foo/",))
    assert sel.excludes[-1] == "usr/lib/foo" and sel.excludes[:-1] == DEFAULT_EXCLUDES
    roots, _ = host_python_paths()
    assert sel.skip_roots == tuple(str(r.resolve()).lstrip("/") for r in roots)
    assert all(sel.excluded(r) and sel.excluded(r + "/lib/libpython3.so") for r in sel.skip_roots)
    assert not any(p in SECRET_EXCLUDES for p in ("etc/passwd", "etc/group"))
    assert not sel.excluded("etc/passwd") and not sel.excluded("usr/lib/x86_64-linux-gnu/libstdc++.so.6")


def test_the_container_user_is_added_even_when_passwd_is_excluded(host: Path) -> None:
    sel = Selection(DEFAULT_EXCLUDES + ("etc/passwd", "etc/group"))
    assert _read(host, sel, "etc/passwd") == f"root:x:0:0:root:/root:/bin/sh\n{tweak_passwd('').strip()}\n"
    assert _read(host, sel, "etc/group").endswith(f"slfaas:x:{CONTAINER_UID}:\n")


def test_a_merged_sbin_becomes_a_real_directory_where_usr_is_mounted_at_run_time(tmp_path: Path) -> None:
    """Docker mounts its init at /sbin/docker-init; where /usr is the node's Python root (mounted
    over the image's at run time) a /sbin link into it would hide the init: /sbin is a directory."""
    root = tmp_path / "merged"
    _write(root, "etc/passwd", PASSWD)
    _write(root, "usr/sbin/ldconfig", "ldconfig")
    _write(root, "usr/bin/python3", "python")
    for link in ("bin", "sbin"):
        os.symlink(f"usr/{link}", root / link)
    mounted = _members(root, Selection(DEFAULT_EXCLUDES, skip_roots=("usr",)))
    assert mounted["sbin"].isdir() and mounted["bin"].issym()   # /bin still resolves into the mounted /usr
    assert "usr/sbin/ldconfig" not in mounted
    kept = _members(root, Selection(DEFAULT_EXCLUDES, skip_roots=("usr/lib/pyroot",)))
    assert kept["sbin"].issym() and kept["sbin"].linkname == "usr/sbin" and "usr/sbin/ldconfig" in kept
