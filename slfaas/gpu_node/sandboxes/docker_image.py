"""Runtime images for docker sandboxes, built without any registry.

The local recipe (``slfaas node build-image``): debootstrap a minimal Debian of the host's
release from Debian's mirror, add the container user and mount points, and ``docker import``
it with the ``slfaas.python=host`` label. Containers of that image run the NODE's Python
installation, mounted read-only at its own path: nothing is installed twice, the image is
~150 MB, and glibc matches because the release is the host's. The rootfs tarball is cached
(``~/.cache/slfaas/images``), so a rebuild takes seconds.

With no network at all, ``host_image`` (``--from-host``) makes the same kind of image from the
host's own files instead.

With a registry, ``docker/Dockerfile.runtime`` builds a self-contained image (slfaas and its
dependencies installed, label ``slfaas.python=image``), e.g. on an NVIDIA CUDA base for GPUs;
``build_dockerfile_image`` drives it with the same progress output.
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from slfaas.gpu_node.sandboxes.docker import (CONTAINER_UID, DEFAULT_IMAGE, LABEL_PYTHON, MODEL_DIR, RUN_DIR,
                                              TASK_DIR, DockerUnavailable, connect)
from slfaas.gpu_node.sandboxes.host_python import host_python_paths

Progress = Callable[[str], None]

DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_CACHE_DIR = Path("~/.cache/slfaas/images").expanduser()
RECIPE_VERSION = "1"
# Shared libraries the node's Python (ssl, sqlite3, pyexpat, readline, curses) needs beyond minbase.
DEFAULT_INCLUDE = ("libssl3", "libsqlite3-0", "libexpat1", "libreadline8", "libncursesw6")


_PER_PACKAGE = re.compile(r"^I: (Retrieving|Validating|Extracting|Unpacking|Configuring) \S+(\.\.\.)?$")


class ImageBuildError(RuntimeError):
    pass


def host_debian_suite() -> str:
    """The host's Debian codename (the image's glibc must match the node's Python), else bookworm."""
    try:
        fields = dict(line.rstrip("\n").split("=", 1) for line in open("/etc/os-release") if "=" in line)
    except OSError:
        return "bookworm"
    if fields.get("ID") == "debian" and fields.get("VERSION_CODENAME"):
        return fields["VERSION_CODENAME"].strip('"')
    return "bookworm"


def _run_streaming(cmd: list[str], progress: Progress, prefix: str = "      ") -> None:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    tail: list[str] = []
    for line in proc.stdout:
        line = line.rstrip()
        tail = (tail + [line])[-20:]
        if _PER_PACKAGE.match(line):
            continue  # hundreds of lines; the phase lines say enough
        progress(prefix + line)
    if proc.wait() != 0:
        raise ImageBuildError(f"{cmd[0]} failed (exit {proc.returncode}):\n" + "\n".join(tail))


def _tweak_rootfs(root: Path) -> None:
    """What the sandbox needs from the filesystem, done before import (no build step, no RUN)."""
    os.chmod(root / "root", 0o755)  # the node's Python may live under /root (pyenv), mounted at its own path
    with open(root / "etc/passwd", "a") as fh:
        fh.write(f"slfaas:x:{CONTAINER_UID}:{CONTAINER_UID}:slfaas function:/tmp:/usr/sbin/nologin\n")
    with open(root / "etc/group", "a") as fh:
        fh.write(f"slfaas:x:{CONTAINER_UID}:\n")
    for d in (TASK_DIR, MODEL_DIR, RUN_DIR):
        (root / d.lstrip("/")).mkdir(parents=True, exist_ok=True)
    for junk in ("var/lib/apt/lists", "var/cache/apt", "usr/share/doc", "usr/share/man", "usr/share/info"):
        shutil.rmtree(root / junk, ignore_errors=True)


def base_rootfs(suite: str, mirror: str, cache_dir: Path, progress: Progress,
                include: tuple[str, ...] = DEFAULT_INCLUDE, rebuild: bool = False) -> Path:
    """The cached rootfs tarball of a minimal Debian ``suite``, made with debootstrap if absent."""
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    out = cache_dir / f"debian-{suite}-{arch}-minbase-r{RECIPE_VERSION}.tar.gz"
    if out.is_file() and not rebuild:
        progress(f"      cached: {out} ({out.stat().st_size / 1e6:.0f} MB)")
        return out
    if shutil.which("debootstrap") is None:
        raise ImageBuildError("debootstrap is not installed (apt-get install -y debootstrap)")
    if os.geteuid() != 0:
        raise ImageBuildError("building the base rootfs needs root (debootstrap); run this command as root once, "
                              "or point --cache-dir at a directory holding a built tarball")
    cache_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=cache_dir))
    try:
        root = work / "root"
        t0 = time.perf_counter()
        progress(f"      debootstrap --variant=minbase {suite} from {mirror} (about a minute) ...")
        _run_streaming(["debootstrap", "--variant=minbase", f"--arch={arch}", f"--include={','.join(include)}",
                        suite, str(root), mirror], progress)
        _tweak_rootfs(root)
        tmp = work / out.name
        subprocess.run(["tar", "--numeric-owner", "--use-compress-program=gzip -1", "-C", str(root), "-cf",
                        str(tmp), "."], check=True)
        os.replace(tmp, out)
        progress(f"      rootfs ready in {time.perf_counter() - t0:.0f} s: {out} ({out.stat().st_size / 1e6:.0f} MB)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _split_tag(image: str) -> tuple[str, str]:
    repo, _, tag = image.rpartition(":")
    if not repo or "/" in tag:
        return image, "latest"
    return repo, tag


def import_rootfs(client: Any, tarball: Path, image: str, suite: str) -> str:
    repo, tag = _split_tag(image)
    changes = [f"USER {CONTAINER_UID}:{CONTAINER_UID}", f"WORKDIR {TASK_DIR}", "ENV LANG=C.UTF-8",
               f"LABEL {LABEL_PYTHON}=host", f"LABEL slfaas.recipe={recipe_label(suite)}"]
    client.api.import_image(src=str(tarball), repository=repo, tag=tag, changes=changes)
    return client.images.get(image).id


def recipe_label(suite: str) -> str:
    return f"debian-{suite}-minbase-r{RECIPE_VERSION}"


HOST_RECIPE_VERSION = "1"


def host_recipe_label() -> str:
    """The ``--from-host`` recipe's label: the host's OS release, so that --check notices an upgrade
    (an image made before it would hold the old glibc under the node's new Python)."""
    try:
        fields = dict(line.rstrip("\n").split("=", 1) for line in open("/etc/os-release") if "=" in line)
    except OSError:
        fields = {}
    release = "-".join(re.sub(r"[^A-Za-z0-9._]", "", fields.get(k, "").strip('"')) or "unknown"
                       for k in ("ID", "VERSION_ID"))
    return f"from-host-{release}-r{HOST_RECIPE_VERSION}"


def image_problem(image: str = DEFAULT_IMAGE, suite: str | None = None, from_host: bool | None = None) -> str | None:
    """None when ``image`` is usable by the docker sandbox, else what is wrong with it.

    A "host" image is current when made by this version of either registry-free recipe: the
    debootstrap one for ``suite`` (default: the host's), or ``--from-host`` on this OS release.
    ``from_host`` True accepts only the latter, False only the former (None: either, unless a
    ``suite`` is named)."""
    import docker.errors

    client = connect(timeout_s=30)
    try:
        labels = client.images.get(image).labels or {}
    except docker.errors.ImageNotFound:
        return f"image {image} does not exist"
    finally:
        client.close()
    accepted = set()
    if not from_host:
        accepted.add(recipe_label(suite or host_debian_suite()))
    if from_host or (from_host is None and suite is None):
        accepted.add(host_recipe_label())
    if labels.get(LABEL_PYTHON) == "host" and labels.get("slfaas.recipe") not in accepted:
        return f"image {image} was built by another recipe ({labels.get('slfaas.recipe')}): rebuild it"
    return None


def smoke_test(client: Any, image: str) -> str:
    """Run the node's Python in the image the way a sandbox does; returns what it printed."""
    from docker.types import Mount

    roots, pythonpath = host_python_paths()
    import sys
    out = client.containers.run(
        image, [sys.executable, "-c", "import slfaas, ssl, sqlite3, ctypes; print('python', __import__('sys').version.split()[0], 'ok')"],
        mounts=[Mount(str(r), str(r), type="bind", read_only=True) for r in roots],
        environment={"PYTHONPATH": str(pythonpath), "HOME": "/tmp"}, network_mode="none", read_only=True,
        tmpfs={"/tmp": "size=16m"}, user=f"{CONTAINER_UID}:{CONTAINER_UID}", remove=True, init=True,
        labels={"slfaas.build": "smoke"})
    return out.decode().strip()


def build_local_image(image: str = DEFAULT_IMAGE, suite: str | None = None, mirror: str | None = None,
                      cache_dir: Path = DEFAULT_CACHE_DIR, rebuild: bool = False,
                      progress: Progress = print) -> str:
    """The registry-free recipe; returns the image id."""
    suite = suite or host_debian_suite()
    mirror = mirror or os.environ.get("SLFAAS_DEBIAN_MIRROR", DEFAULT_MIRROR)
    t0 = time.perf_counter()
    progress("[1/4] connecting to the Docker engine ...")
    client = connect()
    try:
        version = client.version().get("Version", "?")
        progress(f"      Docker engine {version}")
        progress(f"[2/4] base root filesystem: Debian {suite} minbase (+ {', '.join(DEFAULT_INCLUDE)})")
        tarball = base_rootfs(suite, mirror, Path(cache_dir), progress, rebuild=rebuild)
        progress(f"[3/4] docker import → {image}")
        image_id = import_rootfs(client, tarball, image, suite)
        progress(f"      {image_id[:19]}  {client.images.get(image).attrs.get('Size', 0) / 1e6:.0f} MB")
        progress("[4/4] checking that the image runs the node's Python (mounted read-only) ...")
        progress("      " + smoke_test(client, image))
        progress(f"done in {time.perf_counter() - t0:.0f} s: run `slfaas server --sandbox docker`")
        return image_id
    finally:
        client.close()


def build_dockerfile_image(dockerfile: Path, image: str, build_args: dict[str, str],
                           network_mode: str | None = None, progress: Progress = print) -> str:
    """``docker build`` of a Dockerfile whose context is the repository root (Dockerfile.runtime)."""
    context = Path(dockerfile).resolve().parents[1]
    progress(f"[1/2] connecting to the Docker engine ...")
    client = connect()
    try:
        progress(f"[2/2] docker build -f {dockerfile} -t {image} {context}")
        image_id = None
        for chunk in client.api.build(path=str(context), dockerfile=str(Path(dockerfile).resolve()), tag=image,
                                      buildargs=build_args, rm=True, decode=True, network_mode=network_mode):
            if "stream" in chunk and chunk["stream"].strip():
                progress("      " + chunk["stream"].rstrip())
            if "error" in chunk:
                raise ImageBuildError(chunk["error"].strip())
            if "aux" in chunk and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
        return image_id or client.images.get(image).id
    except DockerUnavailable:
        raise
    finally:
        client.close()
