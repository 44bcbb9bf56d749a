"""Checked by mypy (tests/architecture/test_architecture.py), never run: every implementation of
the node boundary the control plane may be given is a ``NodeApi``."""
from __future__ import annotations

from slfaas.gpu_node.api import NodeApi, NodeStream
from slfaas.gpu_node.node import Node
from slfaas.gpu_node.streaming import ResponseStream
from tests.faas.conftest import FakeNode


def the_node(node: Node) -> NodeApi:
    return node


def the_fake(node: FakeNode) -> NodeApi:
    return node


def the_stream(stream: ResponseStream) -> NodeStream:
    return stream
