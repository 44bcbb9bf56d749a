"""A runtime image made from the host's own files (``slfaas node build-image --from-host``).

For hosts with no registry and no Debian mirror (air-gapped GPU machines): the host's ``etc``
and ``usr/{bin,sbin,lib,lib64}`` (plus the top-level ``bin sbin lib lib64`` links) are streamed
as a tar straight into ``docker import``: no debootstrap, no root beyond reading files, no copy
on disk. Like the debootstrap image it carries ``slfaas.python=host``: containers run the node's
Python mounted read-only at its own path, so glibc and every shared library match by
construction. The tweaks the debootstrap recipe makes to its rootfs (container user, mount
points) are made to the stream; the host's own files are only read.

What a Python+torch runtime never needs (JVMs, compilers, LLVM, static libraries, Mesa, perl,
other language runtimes, Docker's own binaries ...) is left out by default; host secrets are
always left out, and so is every file or directory other users may not read (where a host keeps
secrets nobody listed); setuid/setgid bits are dropped. The node's Python install roots are left
out too: they are mounted at run time.
"""
from __future__ import annotations

import fnmatch
import os
import stat
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from slfaas.gpu_node.sandboxes.docker import (CONTAINER_UID, DEFAULT_IMAGE, LABEL_PYTHON, MODEL_DIR, RUN_DIR,
                                              TASK_DIR, connect)
from slfaas.gpu_node.sandboxes.docker_image import ImageBuildError, host_recipe_label, smoke_test
from slfaas.gpu_node.sandboxes.host_python import host_python_paths

Progress = Callable[[str], None]

TOP_DIRS = ("etc", "usr/bin", "usr/sbin", "usr/lib", "usr/lib64")
TOP_LINKS = ("bin", "sbin", "lib", "lib64")  # symlinks into usr on a merged-/usr host; walked if real dirs

# fnmatch patterns on paths relative to / ("*" also matches "/"); a matching directory is pruned.
DEFAULT_EXCLUDES = (
    # toolchains and other language runtimes
    "usr/lib/jvm", "usr/lib/llvm-*", "usr/lib/gcc", "usr/lib/gcc-cross", "usr/lib/*/libLLVM*",
    "usr/lib/*/libclang*", "usr/lib/*/libz3.so*", "usr/lib/*/lib[atlu]san.so*", "usr/lib/*/libhwasan.so*",
    "usr/lib/*.a", "usr/lib/*.o", "usr/lib/debug",
    "usr/lib/valgrind", "usr/lib/*/valgrind", "usr/lib/perl*", "usr/lib/*/perl", "usr/lib/*/perl5",
    "usr/lib/*/perl-base", "usr/lib/ruby", "usr/lib/php*", "usr/lib/node_modules", "usr/lib/nodejs",
    "usr/lib/python2*", "usr/lib/python3*",  # the system Python's; the node's is mounted (see module doc)
    "usr/bin/*-lto-dump*", "usr/bin/node", "usr/bin/nodejs", "usr/bin/gdb", "usr/bin/perf*",
    "usr/bin/cmake", "usr/bin/ctest", "usr/bin/cpack",
    # graphics, kernel, services, package managers
    "usr/lib/*/dri", "usr/lib/*/gtk-*", "usr/lib/*/qt5", "usr/lib/*/qt6", "usr/lib/modules",
    "usr/lib/firmware", "usr/lib/systemd", "usr/lib/udev", "usr/lib/postgresql", "usr/lib/git-core",
    "usr/lib/apt", "usr/lib/dpkg", "usr/lib/locale/locale-archive", "usr/lib/google-cloud-sdk",
    # the NVIDIA driver's user-space libraries: the NVIDIA Container Toolkit injects the running
    # driver's own into a GPU container, so the image never holds a copy gone stale by an upgrade
    "usr/lib/*/libcuda.so*", "usr/lib/*/libcudadebugger.so*", "usr/lib/*/libnvidia-*", "usr/lib/*/libnvcuvid.so*",
    "usr/lib/*/libnvoptix.so*", "usr/bin/nvidia-*",
    # container engines (a runtime never runs one)
    "usr/bin/docker*", "usr/bin/containerd*", "usr/bin/ctr", "usr/bin/runc", "usr/sbin/dockerd",
    "usr/sbin/docker-*", "usr/sbin/runc",
    # caches and docs that may sit under etc
    "etc/apt/*.d/*.bak", "etc/*-", "etc/.pwd.lock",
)

# Never in an image, whatever --exclude says: credentials and keys of the host.
SECRET_EXCLUDES = (
    "etc/shadow*", "etc/gshadow*", "etc/security/opasswd", "etc/sudoers", "etc/sudoers.d",
    "etc/ssh/*key*", "etc/ssl/private", "etc/pki/*/private", "etc/*/private", "etc/*.key", "etc/*.keytab",
    "etc/letsencrypt", "etc/wireguard", "etc/openvpn", "etc/ipsec.secrets", "etc/ppp/*secrets",
    "etc/NetworkManager/system-connections", "etc/docker", "etc/containerd", "etc/apt/auth.conf*",
    "etc/pip.conf", "etc/npmrc", "etc/netrc", "etc/.netrc", "etc/boto.cfg", "etc/credstore*",
    "etc/machine-id", "etc/libvirt/secrets", "etc/cups/ssl", "etc/krb5.keytab",
)

MOUNT_DIRS = (TASK_DIR, MODEL_DIR, RUN_DIR)
_BLOCK = tarfile.BLOCKSIZE
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Selection:
    """Which paths (relative to the source root, no leading slash) go into the image."""
    excludes: tuple[str, ...] = DEFAULT_EXCLUDES
    skip_roots: tuple[str, ...] = ()  # the node's Python install roots: mounted at run time

    def in_skipped_root(self, rel: str) -> bool:
        return any(rel == r or rel.startswith(r + "/") for r in self.skip_roots)

    def excluded(self, rel: str) -> bool:
        if self.in_skipped_root(rel):
            return True
        return any(fnmatch.fnmatchcase(rel, p) for p in SECRET_EXCLUDES + self.excludes)


def normalize_pattern(pattern: str) -> str:
    """An ``--exclude`` pattern as Selection matches it: relative to /, no trailing slash."""
    rel = pattern.strip().strip("/")
    if not rel or rel in ("*", ".") or ".." in rel.split("/"):
        raise ValueError(f"--exclude {pattern!r}: expected a path pattern under /, e.g. usr/lib/foo or '*.so.debug'")
    return rel


def default_selection(extra_excludes: tuple[str, ...] = ()) -> Selection:
    roots, _ = host_python_paths()
    skip = tuple(str(r.resolve()).strip("/") for r in roots)
    if "" in skip:
        raise ImageBuildError("the node's Python is installed at / ; a from-host image cannot leave it out")
    return Selection(DEFAULT_EXCLUDES + tuple(normalize_pattern(p) for p in extra_excludes), skip)


def tweak_passwd(text: str) -> str:
    """The host's passwd plus the container user (any old "slfaas" or uid CONTAINER_UID entry replaced)."""
    keep = [ln for ln in text.splitlines() if not _is_container_entry(ln, uid_field=2)]
    return "\n".join(keep + [f"slfaas:x:{CONTAINER_UID}:{CONTAINER_UID}:slfaas function:/tmp:/usr/sbin/nologin"]) + "\n"


def tweak_group(text: str) -> str:
    keep = [ln for ln in text.splitlines() if not _is_container_entry(ln, uid_field=2)]
    return "\n".join(keep + [f"slfaas:x:{CONTAINER_UID}:"]) + "\n"


def _is_container_entry(line: str, uid_field: int) -> bool:
    fields = line.split(":")
    return fields[0] == "slfaas" or (len(fields) > uid_field and fields[uid_field] == str(CONTAINER_UID))


_REWRITE: dict[str, Callable[[str], str]] = {"etc/passwd": tweak_passwd, "etc/group": tweak_group}


@dataclass
class StreamStats:
    members: int = 0
    bytes_in: int = 0          # file data written
    skipped_unreadable: int = 0
    excluded: int = 0


def _header(info: tarfile.TarInfo) -> bytes:
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _dir_info(name: str, mode: int, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.uid, info.gid = tarfile.DIRTYPE, mode, int(mtime), 0, 0
    return info


def _file_info(name: str, data: bytes, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, int(mtime)
    return info


def _pad(size: int) -> bytes:
    return b"\0" * (-size % _BLOCK)


class _Writer:
    """Walks the selected host paths and yields them as tar blocks, one file at a time."""

    def __init__(self, root: Path, selection: Selection, progress: Progress, every_mb: int) -> None:
        self.root, self.selection, self.progress = root, selection, progress
        self.every_b, self.next_report_b = every_mb << 20, every_mb << 20
        self.links: dict[tuple[int, int], str] = {}
        self.rewritten: set[str] = set()
        self.stats = StreamStats()
        self.t0 = time.perf_counter()

    def _stat_info(self, rel: str, st: os.stat_result) -> tarfile.TarInfo:
        info = tarfile.TarInfo(rel)
        info.mode, info.uid, info.gid, info.mtime = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, int(st.st_mtime)
        return info

    def entry(self, rel: str) -> Iterator[bytes]:
        """One path and, for a directory, everything selected below it."""
        if self.selection.excluded(rel):
            self.stats.excluded += 1
            return
        path = self.root / rel
        try:
            st = path.lstat()
        except OSError:
            self.stats.skipped_unreadable += 1
            return
        if not stat.S_ISLNK(st.st_mode) and not st.st_mode & stat.S_IROTH:
            # Hidden from other users on the host (where unlisted secrets live): the container
            # user could not read it either.
            self.stats.excluded += 1
            return
        info = self._stat_info(rel, st)
        info.mode &= ~(stat.S_ISUID | stat.S_ISGID)  # nothing in the image changes identity
        if stat.S_ISLNK(st.st_mode):
            info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
            yield from self._emit(info)
        elif stat.S_ISDIR(st.st_mode):
            try:
                names = sorted(os.listdir(path))
            except OSError:
                self.stats.skipped_unreadable += 1
                return
            info.type = tarfile.DIRTYPE
            yield from self._emit(info)
            for name in names:
                yield from self.entry(f"{rel}/{name}")
        elif stat.S_ISREG(st.st_mode):
            yield from self._regular(rel, path, st, info)
        # sockets, fifos and device nodes: nothing a runtime reads from an image

    def _regular(self, rel: str, path: Path, st: os.stat_result, info: tarfile.TarInfo) -> Iterator[bytes]:
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in self.links:
            info.type, info.linkname = tarfile.LNKTYPE, self.links[key]
            yield from self._emit(info)
            return
        try:
            fh = open(path, "rb")
        except OSError:  # not readable by this user: left out, counted
            self.stats.skipped_unreadable += 1
            return
        with fh:
            if rel in _REWRITE:
                self.rewritten.add(rel)
                data = _REWRITE[rel](fh.read().decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")
                info.size = len(data)
                yield from self._emit(info, data)
                return
            info.size = st.st_size
            if st.st_nlink > 1:
                self.links[key] = rel
            yield _header(info)
            left = info.size
            while left > 0:
                chunk = fh.read(min(_CHUNK, left)) or b"\0" * min(_CHUNK, left)  # shrank while read: zero-fill
                left -= len(chunk)
                yield chunk
            yield _pad(info.size)
        self._count(info.size)

    def _emit(self, info: tarfile.TarInfo, data: bytes = b"") -> Iterator[bytes]:
        yield _header(info)
        if data:
            yield data + _pad(len(data))
        self._count(len(data))

    def _count(self, size: int) -> None:
        self.stats.members += 1
        self.stats.bytes_in += size
        if self.stats.bytes_in >= self.next_report_b:
            self.next_report_b += self.every_b
            self.progress(f"      {self.stats.bytes_in >> 20:>6} MB, {self.stats.members} files "
                          f"({time.perf_counter() - self.t0:.0f} s)")


def host_tar_stream(root: Path = Path("/"), selection: Selection = Selection(), progress: Progress = print,
                    every_mb: int = 256, stats: StreamStats | None = None) -> Iterator[bytes]:
    """The image's root filesystem as tar bytes: the selected host paths, then the sandbox's
    user, mount points and /tmp. ``stats`` (if given) is filled in as the stream is read."""
    w = _Writer(Path(root), selection, progress, every_mb)
    if stats is not None:
        w.stats = stats
    now = time.time()
    yield _header(_dir_info("usr", 0o755, now))
    for top in TOP_LINKS + TOP_DIRS:
        if not os.path.lexists(w.root / top):
            continue  # e.g. no /usr/lib64 on this host
        if top == "sbin" and _link_into_skipped_root(w.root / top, selection):
            # Docker mounts its init at /sbin/docker-init; through the link it would land under
            # the Python root (e.g. /usr) mounted over it at run time, and the container could
            # not start ("stat /sbin/docker-init: no such file", seen on a GPU host): a real
            # /sbin keeps it visible, and /usr/sbin still comes with the mounted root.
            yield _header(_dir_info(top, 0o755, now))
            continue
        before_b, before_n = w.stats.bytes_in, w.stats.members
        yield from w.entry(top)  # a link stays a link; a real /lib (no merged /usr) is walked
        if not (w.root / top).is_symlink():
            progress(f"      /{top}: {(w.stats.bytes_in - before_b) / 1e6:.0f} MB, {w.stats.members - before_n} "
                     f"entries")
    for rel, base in (("etc/passwd", "root:x:0:0:root:/root:/bin/sh"), ("etc/group", "root:x:0:")):
        if rel not in w.rewritten:  # none on this host, or excluded: the container user is still needed
            data = _REWRITE[rel](base).encode()
            yield from w._emit(_file_info(rel, data, now), data)
    # /root traversable: the node's Python may live under it (pyenv), mounted at its own path
    extra = {"root": 0o755, "tmp": 0o1777, "var": 0o755, "var/tmp": 0o1777, "opt": 0o755, "run": 0o755}
    for d in MOUNT_DIRS:
        parts = d.strip("/").split("/")
        extra.update({"/".join(parts[:i]): 0o755 for i in range(1, len(parts) + 1) if "/".join(parts[:i]) not in extra})
    for name, mode in extra.items():
        yield _header(_dir_info(name, mode, now))
    yield b"\0" * (2 * _BLOCK)  # end of archive


def _link_into_skipped_root(path: Path, selection: Selection) -> bool:
    """``path`` is a symlink whose target is under a root left out of the image (mounted at run time)."""
    if not path.is_symlink():
        return False
    target = os.path.normpath(os.path.join(path.parent.as_posix(), os.readlink(path)))
    try:
        rel = Path(target).relative_to(path.parent).as_posix()
    except ValueError:   # an absolute link (/usr/sbin) on a host tree mounted elsewhere
        rel = target.strip("/")
    return selection.in_skipped_root(rel)


def import_host_image(client: Any, chunks: Iterator[bytes], image: str) -> str:
    from slfaas.gpu_node.sandboxes.docker_image import _split_tag

    repo, tag = _split_tag(image)
    changes = [f"USER {CONTAINER_UID}:{CONTAINER_UID}", f"WORKDIR {TASK_DIR}", "ENV LANG=C.UTF-8",
               f"LABEL {LABEL_PYTHON}=host", f"LABEL slfaas.recipe={host_recipe_label()}"]
    import docker.errors

    # A generator body goes out chunked: nothing of the (GB-sized) tar is held in memory or on disk.
    # Should the stream fail, the engine sees a cut-off upload and makes no image.
    try:
        client.api.import_image(src=chunks, repository=repo, tag=tag, changes=changes, stream_src=True)
    except (OSError, docker.errors.APIError) as exc:
        raise ImageBuildError(f"docker import of the host's files failed: {_innermost(exc)}") from exc
    return str(client.images.get(image).id)


def _innermost(exc: BaseException) -> BaseException:
    """What went wrong below requests' and urllib3's wrappers (e.g. the stream's own OSError)."""
    for _ in range(8):  # bounded: a wrapper could hold itself
        inner = next((a for a in exc.args if isinstance(a, BaseException)), None) or exc.__cause__
        if inner is None:
            break
        exc = inner
    return exc


def build_host_image(image: str = DEFAULT_IMAGE, excludes: tuple[str, ...] = (), progress: Progress = print,
                     root: Path = Path("/")) -> str:
    """The from-host recipe; returns the image id."""
    selection = default_selection(excludes)
    t0 = time.perf_counter()
    progress("[1/4] connecting to the Docker engine ...")
    client = connect(timeout_s=1800)  # the engine answers an import only once it has unpacked the layer
    try:
        progress(f"      Docker engine {client.version().get('Version', '?')}")
        progress(f"[2/4] root filesystem from this host: /{', /'.join(TOP_DIRS)} "
                 f"({len(selection.excludes)} exclude patterns, secrets always out; "
                 f"Python roots mounted at run time: {', '.join('/' + r for r in selection.skip_roots)})")
        stats = StreamStats()
        progress(f"[3/4] streaming it into docker import → {image}")
        image_id = import_host_image(client, host_tar_stream(root, selection, progress, stats=stats), image)
        size_b = client.images.get(image).attrs.get("Size", 0)
        progress(f"      {image_id[:19]}  {size_b / 1e6:.0f} MB ({stats.members} entries"
                 + (f", {stats.skipped_unreadable} unreadable left out" if stats.skipped_unreadable else "") + ")")
        progress("[4/4] checking that the image runs the node's Python (mounted read-only) ...")
        progress("      " + smoke_test(client, image))
        flag = "" if image == DEFAULT_IMAGE else f" --docker-image {image}"
        progress(f"done in {time.perf_counter() - t0:.0f} s: run `slfaas server --sandbox docker{flag}`")
        return image_id
    finally:
        client.close()

