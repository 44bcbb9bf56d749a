"""A private backbone (a node without sharing, as a baseline): loaded from the checkpoint or
copied out of the node's host image, the engine's greedy tokens equal the shared one's, and
its parameters are its own memory, not views of the node's image."""
from __future__ import annotations

import pytest

from slfaas.functions.backbone_source import BackboneSource
from slfaas.functions.engine import LoraEngine
from slfaas.functions.events import parse_event
from slfaas.gpu_node.resources.shared_weights import build_shared_image
from slfaas.runtime_contract import ENV_BACKBONE_FD, ENV_BACKBONE_PRIVATE, ENV_DEVICE


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from slfaas.testing.tinymodels import make_adapter, make_base_model

    root = tmp_path_factory.mktemp("private")
    base = make_base_model(root / "base")
    return base, make_adapter(base, root / "adapter", seed=7), build_shared_image(base)


def _tokens(engine: LoraEngine) -> tuple[int, ...]:
    return engine.generate(parse_event({"prompt": "the quick brown fox", "max_tokens": 6, "temperature": 0,
                                        "ignore_eos": True})).token_ids


def test_private_backbones_generate_what_the_shared_one_does(kit) -> None:  # type: ignore[no-untyped-def]
    base, adapter, image = kit
    shared = LoraEngine(BackboneSource(fd=image.fd), base, adapter)
    from_checkpoint = LoraEngine(BackboneSource(private="checkpoint"), base, adapter)
    copied = LoraEngine(BackboneSource(fd=image.fd, private="copy"), base, adapter)
    assert _tokens(shared) == _tokens(from_checkpoint) == _tokens(copied)
    # the shared engine's weights are read-only views of the image; the private ones are writable memory
    name, param = next((n, p) for n, p in shared.model_base.named_parameters() if p.dim() == 2)
    for engine in (from_checkpoint, copied):
        mine = dict(engine.model_base.named_parameters())[name]
        assert mine.data_ptr() != param.data_ptr()
        mine.data.view(-1)[0] += 0.0   # its own memory: a write does not fault
    assert copied._backbone_keepalive is None   # nothing of the image is kept mapped


def test_from_env_reads_the_private_mode_and_refuses_an_unknown_one() -> None:
    src = BackboneSource.from_env({ENV_DEVICE: "cpu", ENV_BACKBONE_FD: "7", ENV_BACKBONE_PRIVATE: "copy"})
    assert src.private == "copy" and src.fd == 7
    assert BackboneSource.from_env({ENV_DEVICE: "cpu"}).private is None
    with pytest.raises(ValueError, match="SLFAAS_BACKBONE_PRIVATE must be one of checkpoint, copy"):
        BackboneSource.from_env({ENV_BACKBONE_PRIVATE: "borrowed"})
