"""The backbone socket a container connects to: a read-only host image (CPU), or the GPU
arena's descriptor and its tensor table (CUDA VMM), handed over once."""
from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

import pytest

from slfaas.gpu_node.sandboxes.docker_sandbox import BackboneHandout
from slfaas.runtime_contract import ENV_BACKBONE_FD, ENV_BACKBONE_TABLE_FD, ENV_BACKBONE_VMM_FD
from slfaas.weights.image import HANDOUT_IMAGE, HANDOUT_VMM, open_image_path, receive_backbone


def _sealed(body: bytes) -> int:
    fd = os.memfd_create("slfaas-test", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.write(fd, body)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK)
    return fd


def _same_file(a: int, b: int) -> bool:
    sa, sb = os.fstat(a), os.fstat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def test_what_a_runtime_borrows_by_descriptor() -> None:
    assert BackboneHandout.descriptors({ENV_BACKBONE_FD: "7"}) == (HANDOUT_IMAGE, (7,))
    assert BackboneHandout.descriptors({ENV_BACKBONE_VMM_FD: "8", ENV_BACKBONE_TABLE_FD: "9"}) == (HANDOUT_VMM, (8, 9))
    assert BackboneHandout.descriptors({ENV_BACKBONE_VMM_FD: "8"}) is None    # no table: nothing to map
    assert BackboneHandout.descriptors({}) is None


def test_the_gpu_arena_and_its_table_travel_read_only_and_once(tmp_path: Path) -> None:
    arena, table = _sealed(b"arena bytes"), _sealed(b'{"size_bytes": 11, "tensors": []}')
    handout = BackboneHandout(tmp_path / "bb.sock", HANDOUT_VMM, (arena, table))
    try:
        kind, fds = receive_backbone(str(tmp_path / "bb.sock"))
        assert kind == HANDOUT_VMM and len(fds) == 2
        assert _same_file(fds[0], arena) and _same_file(fds[1], table)
        assert os.pread(fds[1], 64, 0).startswith(b'{"size_bytes"')
        assert fcntl.fcntl(fds[1], fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY   # the table: reopened read-only
        with pytest.raises(OSError):
            os.write(fds[1], b"x")
        for fd in fds:
            os.close(fd)
        # once: the socket is gone after the first hand-over
        with pytest.raises(OSError):
            receive_backbone(str(tmp_path / "bb.sock"))
    finally:
        handout.close()
        os.close(arena)
        os.close(table)
    assert not (tmp_path / "bb.sock").exists()


def test_an_image_socket_and_a_gpu_socket_are_not_confused(tmp_path: Path) -> None:
    image = _sealed(b"image")
    BackboneHandout(tmp_path / "img.sock", HANDOUT_IMAGE, (image,))
    fd = open_image_path(str(tmp_path / "img.sock"))
    assert _same_file(fd, image) and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
    os.close(fd)
    arena, table = _sealed(b"a"), _sealed(b"t")
    BackboneHandout(tmp_path / "gpu.sock", HANDOUT_VMM, (arena, table))
    with pytest.raises(RuntimeError, match="GPU arena"):
        open_image_path(str(tmp_path / "gpu.sock"))
    for f in (image, arena, table):
        os.close(f)


def test_a_socket_that_sends_something_else_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "odd.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)
    extra = _sealed(b"x")

    import threading

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            socket.send_fds(conn, [HANDOUT_VMM], [extra])   # a VMM message with one descriptor, not two
    t = threading.Thread(target=serve)
    t.start()
    with pytest.raises(RuntimeError, match="no backbone descriptor"):
        receive_backbone(str(path))
    t.join()
    srv.close()
    os.close(extra)
