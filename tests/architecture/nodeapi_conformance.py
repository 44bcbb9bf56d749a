"""Checked by mypy (tests/architecture/test_architecture.py), never run: every implementation of
the node boundary the control plane may be given is a ``NodeApi``."""
from __future__ import annotations

from slfaas.gpu_node.api import NodeApi, NodeStream
from slfaas.gpu_node.cluster.handle import LocalNode, NodeHandle
from slfaas.gpu_node.cluster.nodeset import NodeSet
from slfaas.gpu_node.node import Node
from slfaas.gpu_node.ray.client import RayNodeClient, RayNodeStream
from slfaas.gpu_node.streaming import ResponseStream
from tests.faas.conftest import FakeNode


def the_node(node: Node) -> NodeApi:
    return node


def the_fake(node: FakeNode) -> NodeApi:
    return node


def the_stream(stream: ResponseStream) -> NodeStream:
    return stream


def the_set(nodes: NodeSet) -> NodeApi:
    return nodes


def a_local_node(node: LocalNode) -> NodeHandle:
    return node


def a_ray_node(node: RayNodeClient) -> NodeHandle:
    return node


def the_ray_stream(stream: RayNodeStream) -> NodeStream:
    return stream
