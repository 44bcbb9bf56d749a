#!/usr/bin/env bash
# Builds a minimal Docker engine bundle (dockerd, containerd, containerd-shim-runc-v2, runc, docker-proxy,
# docker-init (tini, for containers started with an init) and libdevmapper) from Debian's packages, for the GPU machine, which has no package registry.
# usage: scripts/docker-bundle.sh OUT.tar.xz      (about 35 MiB; carry it to the device)
# On the device:  mkdir -p /tmp/dk && tar -C /tmp/dk -xJf OUT.tar.xz && export PATH=/tmp/dk/bin:$PATH
#   (LD_LIBRARY_PATH=/tmp/dk/lib setsid dockerd --iptables=false --bridge=none --data-root /tmp/dkroot \
#       -H unix:///tmp/docker.sock >/tmp/dockerd.log 2>&1 &);  export DOCKER_HOST=unix:///tmp/docker.sock
# GPU in a container without the NVIDIA Container Toolkit (seen working on the H200 machine):
#   --device /dev/nvidia0 --device /dev/nvidiactl --device /dev/nvidia-uvm
#   -v /usr/local/nvidia:/usr/local/nvidia:ro (libcuda.so.1 in lib64)  -v /opt/torch:/opt/torch:ro (its Python)
set -euo pipefail
out=$(realpath -m "${1:?usage: docker-bundle.sh OUT.tar.xz}")
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cd "$work"
pkgs="docker.io containerd runc tini libdevmapper1.02.1"
apt-get download $pkgs >/dev/null 2>&1 || { apt-get update -q >/dev/null; apt-get download $pkgs >/dev/null; }
mkdir x b b/bin b/lib
for f in *.deb; do dpkg -x "$f" x; done
for p in usr/sbin/dockerd usr/bin/containerd usr/bin/containerd-shim-runc-v2 usr/sbin/runc usr/bin/runc usr/sbin/docker-proxy usr/bin/docker-proxy; do
  [ -f "x/$p" ] && cp "x/$p" b/bin/
done
cp x/usr/bin/tini-static b/bin/docker-init   # dockerd looks for docker-init on its PATH
cp -a x/lib/x86_64-linux-gnu/libdevmapper* b/lib/
tar -C b -cJf "$out" .
ls -la "$out"
