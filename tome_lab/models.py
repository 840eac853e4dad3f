"""Model factory: any timm model, a checkpoint file, or tome_lab's embedded digits ViT.

One path for every model: ``create_model(ModelConfig)`` calls ``timm.create_model``, and the
embedded model ``vit_digits`` is registered with timm's own ``register_model`` so that
``timm.create_model("vit_digits")`` builds it too. Pretrained timm weights come through timm's
own loading (its cache, and the hub only when the machine can reach it); offline with nothing
cached, ``create_model`` fails at once with how to provide them. The embedded default never
needs the network.

``vit_digits`` is a DeiT (Touvron et al., ICML 2021) ``VisionTransformerDistilled`` with a
small convolutional stem in place of the patch embedding (Xiao et al., "Early convolutions help
transformers see better", NeurIPS 2021), which is what makes a ViT learn from 4,000 images.
Its blocks are plain timm ``Block`` / ``Attention``, so ToMe patches it like any timm ViT.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tome_lab.config import ModelConfig

ZOO_DIR = Path(__file__).resolve().parent / "zoo"
ZOO_CHECKPOINT = ZOO_DIR / "vit_digits.safetensors"
EMBEDDED = "vit_digits"

# MNIST's pixel statistics; 1 channel because digits are grey (a 3-channel copy would triple
# the stem's first layer for nothing).
_DIGITS_CFG: dict[str, Any] = dict(
    url="", hf_hub_id=None, num_classes=10, input_size=(1, 32, 32), mean=(0.1307,),
    std=(0.3081,), interpolation="bilinear", crop_pct=1.0, crop_mode="center",
    first_conv="patch_embed.stem.0", classifier=("head", "head_dist"), license="mit",
)
# timm's register_model reads the module's default_cfgs for the model's pretrained config.
default_cfgs: dict[str, dict[str, Any]] = {EMBEDDED: _DIGITS_CFG}


class ConvStem(nn.Module):
    """A patch embedding made of three 3x3 convolutions: [B, C, 32, 32] -> [B, 64, D].

    It keeps the attributes timm and tome_lab read from ``PatchEmbed``: ``img_size``,
    ``patch_size``, ``grid_size``, ``num_patches``, ``proj`` (the last convolution, which sets
    the width) and ``norm``. ``stem`` holds the convolutions before ``proj``.

    Args:
        img_size: input height and width.
        patch_size: total stride of the stem (two stride-2 convolutions make 4).
        in_chans: input channels.
        embed_dim: token width.
        bias: bias of ``proj`` (timm passes ``not pre_norm``).
        width: channels of the first convolution (doubled in the second).
        **kwargs: other ``PatchEmbed`` arguments timm passes; ``norm_layer`` is honoured.
    """

    def __init__(self, img_size: int = 32, patch_size: int = 4, in_chans: int = 1,
                 embed_dim: int = 128, bias: bool = True, width: int = 32,
                 **kwargs: Any) -> None:
        super().__init__()
        if patch_size != 4:
            raise ValueError(f"ConvStem has a fixed stride of 4, got patch_size={patch_size}")
        if kwargs.get("output_fmt") not in (None, "NCHW") or kwargs.get("dynamic_img_pad"):
            raise ValueError("ConvStem supports fixed-size inputs only (no dynamic_img_size)")
        norm_layer = kwargs.get("norm_layer")
        self.img_size = (img_size, img_size)
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.in_chans = in_chans
        self.flatten = True
        self.output_fmt = "NCHW"
        self.dynamic_img_pad = False
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * width),
            nn.GELU(),
        )
        self.proj = nn.Conv2d(2 * width, embed_dim, 3, 2, 1, bias=bias)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def feat_ratio(self, as_scalar: bool = True) -> int | tuple[int, int]:
        """Total stride, as timm's ``PatchEmbed.feat_ratio``."""
        return self.patch_size[0] if as_scalar else self.patch_size

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> [B, N, D] tokens, row-major over the grid."""
        x = self.proj(self.stem(x))  # (B, D, H/4, W/4)
        return self.norm(x.flatten(2).transpose(1, 2))  # (B, N, D)


def register_once(fn: Callable[..., nn.Module]) -> None:
    """Registers a model function with timm under its own name, once per process.

    timm's registry is global; importing a module twice (or reloading it in a test) must not
    register twice, which timm warns about.
    """
    from timm.models import is_model, register_model

    if not is_model(fn.__name__):
        register_model(fn)


def finish_zoo_model(model: nn.Module, cfg: dict[str, Any], pretrained: bool,
                     checkpoint: Path, how_to_train: str) -> nn.Module:
    """Gives a tome_lab model its pretrained config and, if asked, its committed weights.

    Args:
        model: the freshly built network.
        cfg: its timm pretrained config (``input_size``, ``mean``, ``std``, ...).
        pretrained: load ``checkpoint`` (a local file; never downloads).
        checkpoint: the zoo checkpoint of this model.
        how_to_train: the sentence telling the user how to make a missing checkpoint.

    Raises:
        FileNotFoundError: ``pretrained`` and the checkpoint file does not exist.
    """
    model.pretrained_cfg = model.default_cfg = cfg
    if pretrained:
        if not checkpoint.is_file():
            raise FileNotFoundError(
                f"the checkpoint {checkpoint} is missing; {how_to_train}, or pass "
                f"checkpoint=PATH")
        load_checkpoint(model, checkpoint)
    return model


def build_zoo_model(cls: Callable[..., nn.Module], defaults: dict[str, Any],
                    kwargs: dict[str, Any], base_cfg: dict[str, Any], name: str,
                    pretrained: bool, checkpoint: Path) -> nn.Module:
    """Builds one of tome_lab's own ViTs: ``kwargs`` over ``defaults`` (timm's own plumbing
    keywords dropped), its pretrained config with the input size it was built for, and, if
    asked, its committed weights (:func:`finish_zoo_model`).

    Args:
        cls: the timm model class (``VisionTransformer``, ``VisionTransformerDistilled``).
        defaults: the model's architecture.
        kwargs: what the caller of the model function overrides.
        base_cfg: its timm pretrained config.
        name: its registered name (also the name of its zoo record).
        pretrained: load ``checkpoint``.
        checkpoint: its zoo checkpoint.
    """
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    args = {**defaults, **kwargs}
    model = cls(**args)
    cfg = dict(base_cfg, architecture=name)
    cfg["input_size"] = (args["in_chans"], *model.patch_embed.img_size)
    return finish_zoo_model(
        model, cfg, pretrained, checkpoint,
        f"train it with `python -m tome_lab.train` (tome_lab/zoo/{name}.json holds the command)")


def _register() -> None:
    from tome_lab.registry import TIMM_MODELS, import_plugins

    register_once(vit_digits)
    import_plugins(TIMM_MODELS)  # the embedded tasks register their models with timm


def vit_digits(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """The embedded DeiT-style ViT for 32x32 digits: 64 patch tokens + class + distillation.

    Width 128, depth 12, 4 heads (head_dim 32 as in DeiT), MLP ratio 2 (halves the MLP cost
    of a CPU-trained model; the digits do not need the capacity).

    Args:
        pretrained: load the committed zoo checkpoint (``tome_lab/zoo``); never downloads.
        **kwargs: ``VisionTransformer`` arguments overriding the defaults.
    """
    from timm.models.deit import VisionTransformerDistilled

    return build_zoo_model(VisionTransformerDistilled, dict(
        img_size=32, patch_size=4, in_chans=1, num_classes=10, embed_dim=128, depth=12,
        num_heads=4, mlp_ratio=2.0, embed_layer=ConvStem, class_token=True,
        global_pool="token"), kwargs, _DIGITS_CFG, EMBEDDED, pretrained, ZOO_CHECKPOINT)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Reads tensors from a safetensors file or a torch state dict, never unpickling objects.

    Args:
        path: ``*.safetensors``, or a file written by ``torch.save`` holding a state dict
            (possibly under a ``state_dict`` / ``model`` / ``state_dict_ema`` key).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file holds something other than a state dict of tensors.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {str(p)!r} does not exist")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p), device="cpu")
    try:
        # weights_only: tensors and plain containers only; a pickle with code is refused.
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, ... by version
        raise ValueError(f"cannot read checkpoint {str(p)!r} as a torch state dict "
                         f"(loaded with weights_only=True): {e}") from e
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"checkpoint {str(p)!r} is not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_checkpoint(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Loads a checkpoint into ``model`` strictly, casting to the model's dtypes.

    Raises:
        ValueError: keys or shapes do not match the model (the first few are named).
    """
    state = read_state_dict(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(
            f"checkpoint {str(path)!r} does not fit {type(model).__name__}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatch {wrong[:5]}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    return model


def weights_file(cfg: Any) -> Path | None:
    """The file a model configuration loads its weights from, for any model.

    ``model.checkpoint`` when given; else, with ``pretrained``, the zoo file of the embedded
    model, the local file that the pretrained config of a tome_lab task model names, or the
    file in timm's cache for a hub model. None for random weights, or for pretrained weights
    that are not on this machine (loading would fetch or fail; nothing to digest).

    Args:
        cfg: a :class:`tome_lab.config.ModelConfig` (or anything with ``name``,
            ``checkpoint`` and ``pretrained``).
    """
    path = getattr(cfg, "checkpoint", None)
    if path:
        return Path(path)
    name = getattr(cfg, "name", None)
    if not name or not getattr(cfg, "pretrained", False):
        return None
    if name == EMBEDDED:
        return ZOO_CHECKPOINT
    import timm

    _register()
    if not timm.is_model(name):
        return None
    if _local_weights(name):
        from timm.models import get_pretrained_cfg

        return Path(get_pretrained_cfg(name).file)
    return _cached_weights(name)


# Where timm would fetch pretrained weights from, to decide whether it can run offline.
_HUB_HOST = ("huggingface.co", 443)
_PROBE_TIMEOUT_S = 3.0


def _weights_cached(name: str) -> bool:
    """Whether the weights timm's loader would read for ``name`` are already on this machine
    (a file in its cache, or a state dict held in the pretrained config itself)."""
    from timm.models import get_pretrained_cfg
    from timm.models._builder import _resolve_pretrained_source

    cfg = get_pretrained_cfg(name)
    if cfg is not None and _resolve_pretrained_source(cfg.to_dict())[0] == "state_dict":
        return True
    return _cached_weights(name) is not None


def _cached_weights(name: str) -> Path | None:
    """The file timm's loader would read for ``name`` when it is already on this machine.

    Follows timm's own choice of source (``timm.models._builder._resolve_pretrained_source``):
    the Hugging Face hub when the config names a hub id, else the URL (torch hub cache), else
    a local file. Only that source counts, so a stray torch-hub file does not stand in for a
    hub checkpoint that timm would try to fetch first.
    """
    from timm.models import get_pretrained_cfg
    from timm.models._builder import _resolve_pretrained_source

    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return None
    source, loc = _resolve_pretrained_source(cfg.to_dict())
    if source == "hf-hub":
        from huggingface_hub import try_to_load_from_cache
        from timm.models._hub import hf_split

        repo, fname = loc if isinstance(loc, tuple) else (loc, None)
        repo, revision = hf_split(repo)
        names = [fname] if fname else ["model.safetensors", "open_clip_model.safetensors",
                                       "pytorch_model.bin", "open_clip_pytorch_model.bin"]
        for f in names:
            hit = try_to_load_from_cache(repo, f, revision=revision)
            if isinstance(hit, str):
                return Path(hit)
        return None
    if source == "url":
        hit = Path(torch.hub.get_dir()) / "checkpoints" / Path(loc).name
        return hit if hit.is_file() else None
    if source in ("file", "local-dir"):
        return Path(loc) if loc and Path(loc).exists() else None
    return None


def _local_weights(name: str) -> bool:
    """Whether ``name``'s pretrained config points at a local file and at no hub or URL."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    return (cfg is not None and bool(getattr(cfg, "file", None)) and not cfg.hf_hub_id
            and not cfg.url)


def _online(address: tuple[str, int] = _HUB_HOST, timeout: float = _PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the weights host opens within ``timeout`` seconds."""
    import socket

    try:
        with socket.create_connection(address, timeout=timeout):
            return True
    except Exception:  # OSError, DNS failure, or a socket blocked by pytest-socket
        return False


@contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Puts huggingface_hub in offline mode (cache only) for the duration, when ``offline``.

    huggingface_hub reads ``HF_HUB_OFFLINE`` from the environment once, at import; its
    ``constants.HF_HUB_OFFLINE`` is what it consults on each call, so that is what is set.
    """
    if not offline:
        yield
        return
    from huggingface_hub import constants

    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


def create_model(cfg: ModelConfig | None = None) -> nn.Module:
    """Builds the model a ``ModelConfig`` names, in eval mode, on the CPU.

    - ``checkpoint=PATH``: random init, then the file's weights (safetensors or torch).
    - ``vit_digits`` with ``pretrained``: the committed zoo checkpoint.
    - a model whose pretrained config names only a local file (the embedded tasks' models:
      ``vit_clutter``, ``vit_video_digits``, ``vit_video_dir``, ``vit_audio_digits``) with
      ``pretrained``: that file, with no network probe.
    - another timm name with ``pretrained``: timm's loading (its cache, or the hub when a
      3-second connection probe to it succeeds).
    - ``pretrained=False``: random init (speed-only runs).

    Raises:
        ValueError: unknown model name, or pretrained weights not available offline.
        FileNotFoundError: the checkpoint file does not exist.
    """
    import timm

    cfg = cfg or ModelConfig()
    _register()
    if not timm.is_model(cfg.name):
        import difflib

        close = difflib.get_close_matches(cfg.name, timm.list_models(), n=3, cutoff=0.6)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown timm model {cfg.name!r}.{hint} "
                         f"The embedded default is {EMBEDDED!r}; see timm.list_models().")
    if cfg.checkpoint is not None:
        model = timm.create_model(cfg.name, pretrained=False)
        load_checkpoint(model, cfg.checkpoint)
    elif cfg.pretrained and cfg.name != EMBEDDED and not _local_weights(cfg.name):
        # timm's own loading: its cache, and the hub only when this machine can reach it;
        # offline and uncached, say how to provide weights instead of waiting on the network.
        online = _online()
        if not online and not _weights_cached(cfg.name):
            raise ValueError(
                f"no pretrained weights for {cfg.name!r} in timm's cache and no network to "
                f"fetch them. Provide them with checkpoint=PATH (--checkpoint: a .safetensors "
                f"file or a torch state dict), or fill timm's cache on a machine with network "
                f"(timm.create_model({cfg.name!r}, pretrained=True) there, then copy "
                f"~/.cache/huggingface/hub, or set HF_HUB_CACHE / TORCH_HOME); "
                f"pretrained=False gives random weights for speed-only runs.")
        with _hub_offline(not online):
            model = timm.create_model(cfg.name, pretrained=True)
    else:
        model = timm.create_model(cfg.name, pretrained=cfg.pretrained)
    return model.eval()


_register()
