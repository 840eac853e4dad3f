"""Model factory: vit_digits through timm, checkpoints, no hub access."""

from __future__ import annotations

import pickle

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import Attention
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import Block

import tome_lab
from tome_lab.config import ModelConfig
from tome_lab.models import ZOO_CHECKPOINT, ConvStem, create_model, load_checkpoint


@pytest.fixture(scope="module")
def model():
    return create_model(ModelConfig(pretrained=False))


def test_vit_digits_is_a_plain_timm_deit(model):
    assert isinstance(model, VisionTransformerDistilled)
    assert isinstance(model.patch_embed, ConvStem)
    assert all(type(b) is Block and type(b.attn) is Attention for b in model.blocks)
    assert model.patch_embed.num_patches == 64 and model.patch_embed.grid_size == (8, 8)
    assert model.pos_embed.shape == (1, 66, 128) and len(model.blocks) == 12
    assert model.pretrained_cfg["input_size"] == (1, 32, 32)


def test_vit_digits_through_timm_and_tome(model):
    assert isinstance(timm.create_model("vit_digits"), VisionTransformerDistilled)
    x = torch.randn(2, 1, 32, 32)
    tome_lab.apply_tome(model, r=4)
    try:
        assert model(x).shape == (2, 10)
        assert tome_lab.tome_state(model).tokens == [66 - 4 * (i + 1) for i in range(12)]
    finally:
        tome_lab.remove_tome(model)


def test_conv_stem_tokens(model):
    assert model.patch_embed(torch.randn(3, 1, 32, 32)).shape == (3, 64, 128)


def test_default_loads_the_zoo_checkpoint():  # a missing zoo file fails here
    from safetensors.torch import load_file

    m = create_model()
    ref = load_file(str(ZOO_CHECKPOINT))
    assert torch.equal(m.state_dict()["head.weight"], ref["head.weight"].float())
    assert not m.training
    assert ZOO_CHECKPOINT.stat().st_size <= 10 * 2**20


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_checkpoint_round_trip(tmp_path, model, fmt):
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / f"w.{fmt}"
    if fmt == "safetensors":
        save_file(state, str(path))
    else:
        torch.save({"model": state}, path)
    m = create_model(ModelConfig(checkpoint=str(path)))
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(m(x), model.eval()(x))


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled arbitrary code",))


def test_checkpoint_with_arbitrary_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"x": _Evil()}, f)
    with pytest.raises(ValueError, match="weights_only"):
        create_model(ModelConfig(checkpoint=str(path)))


def test_checkpoint_that_does_not_fit(tmp_path, model):
    path = tmp_path / "w.safetensors"
    save_file({"head.weight": torch.zeros(3, 3)}, str(path))
    with pytest.raises(ValueError, match="missing"):
        load_checkpoint(model, path)


def test_missing_checkpoint():
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        create_model(ModelConfig(checkpoint="nope.safetensors"))


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """timm's caches (Hugging Face hub and torch hub) pointed at empty folders."""
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "hf"


def test_pretrained_timm_weights_absent_offline_fail_fast(empty_caches):
    """Sockets are disabled for the suite (pytest-socket): no cache, no network -> a message."""
    import socket

    with pytest.raises(Exception, match="[Ss]ocket"):  # the suite really has no network
        socket.create_connection(("huggingface.co", 443), timeout=1)
    with pytest.raises(ValueError, match="no pretrained weights .* no network") as e:
        create_model(ModelConfig(name="deit_tiny_patch16_224", pretrained=True))
    assert "checkpoint=PATH" in str(e.value) and "--checkpoint" in str(e.value)


def test_pretrained_timm_weights_from_timms_cache_offline(empty_caches):
    """A checkpoint in timm's Hugging Face cache loads through timm with no network."""
    import huggingface_hub.constants as hub_constants
    from timm.models import get_pretrained_cfg

    before = hub_constants.HF_HUB_OFFLINE

    repo = get_pretrained_cfg("deit_tiny_patch16_224").hf_hub_id  # what timm would fetch
    snap = empty_caches / f"models--{repo.replace('/', '--')}"
    (snap / "refs").mkdir(parents=True)
    (snap / "refs" / "main").write_text("0" * 40)
    (snap / "snapshots" / ("0" * 40)).mkdir(parents=True)
    torch.manual_seed(3)
    src = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    save_file(src.state_dict(), str(snap / "snapshots" / ("0" * 40) / "model.safetensors"))
    m = create_model(ModelConfig(name="deit_tiny_patch16_224", pretrained=True))
    for k, v in src.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k
    assert hub_constants.HF_HUB_OFFLINE is before  # offline mode was only for the load


def test_random_init_of_any_timm_name():
    m = create_model(ModelConfig(name="deit_tiny_patch16_224", pretrained=False))
    assert m.num_classes == 1000


def test_unknown_model_suggests():
    with pytest.raises(ValueError, match="vit_digits"):
        create_model(ModelConfig(name="vit_digit"))


@pytest.mark.parametrize("name", ["vit_clutter", "vit_video_digits", "vit_video_dir",
                                  "vit_audio_digits"])
def test_embedded_task_models_load_their_zoo_file_without_probing_the_network(name, monkeypatch):
    import timm

    from tome_lab import models

    def no_probe(*a, **k):
        raise AssertionError("the network was probed for a model whose weights are local")

    monkeypatch.setattr(models, "_online", no_probe)
    m = create_model(ModelConfig(name=name, pretrained=True))
    file = timm.models.get_pretrained_cfg(name).file
    ref = models.load_checkpoint(timm.create_model(name, pretrained=False), file).eval()
    for (k, a), (_, b) in zip(m.state_dict().items(), ref.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
