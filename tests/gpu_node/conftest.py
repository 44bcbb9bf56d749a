"""Fixtures the node's tests share: a code dir and real Nodes over fake sandboxes."""
from __future__ import annotations

from pathlib import Path

import pytest

from slfaas.gpu_node.config import NodeConfig
from slfaas.gpu_node.node import Node
from slfaas.gpu_node.resources.backbone import BackboneOwner
from tests.gpu_node.fakes import FakeSandboxFactory


@pytest.fixture
def code_dir(tmp_path: Path) -> Path:
    d = tmp_path / "code"
    d.mkdir()
    return d


@pytest.fixture
def make_node(tmp_path: Path):  # type: ignore[no-untyped-def]
    """``make(**NodeConfig fields)`` → (node, its fake sandbox factory); all shut down after the test."""
    nodes: list[Node] = []

    def make(**config) -> tuple[Node, FakeSandboxFactory]:  # type: ignore[no-untyped-def]
        factory = FakeSandboxFactory()
        node = Node(NodeConfig(data_dir=tmp_path / f"node{len(nodes)}", **config), factory, BackboneOwner())
        nodes.append(node)
        return node, factory

    yield make
    for n in nodes:
        n.shutdown()
