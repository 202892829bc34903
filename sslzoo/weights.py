"""Released weights of the official repositories, read onto our backbones.

The files are read with ``torch.load(weights_only=True)`` (``argparse.Namespace``, which DINO's
and iBOT's full checkpoints store as ``args``, is the one class allowed besides tensors).
Layouts understood, by what the file holds at its top level:

- DINO / iBOT full checkpoints (facebookresearch/dino ``main_dino.py``, bytedance/ibot
  ``main_ibot.py``): ``teacher`` and ``student`` state dicts of the ``MultiCropWrapper``
  (``backbone.*`` and ``head.*``; the DDP-wrapped student also ``module.``), and ``args``;
- iBOT's ``checkpoint_teacher.pth``: ``{"state_dict": teacher backbone}``;
- MoCo v3 (facebookresearch/moco-v3 ``main_moco.py``): ``{"state_dict": ...}`` with
  ``module.base_encoder.*`` and ``module.momentum_encoder.*`` (each with its projector as
  ``head.*`` on ViTs, ``fc.*`` on ResNets), ``module.predictor.*``, and ``arch``;
- MAE (facebookresearch/mae ``main_pretrain.py``): ``{"model": ...}`` with the encoder under timm's
  names and, in the full and ``*_visualize_*`` files, the decoder (``decoder_*``) and ``mask_token``,
  which are dropped; a training checkpoint's ``args.model`` names the architecture;
- a bare backbone state dict: DINO's ``*_pretrain.pth``, a torchvision-format ResNet
  (how BYOL and SimCLR weights are converted; its ``fc`` classifier is dropped), or an sslzoo
  ``backbone.pt``.

DINO's, iBOT's, MoCo v3's and MAE's ViTs use timm's parameter names (``cls_token``, ``pos_embed``,
``patch_embed.proj``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``), so
after the prefixes are stripped and the heads dropped, keys map one to one; every shape is
checked, and the first mismatch is reported in one line with the fix.
"""

from __future__ import annotations

import argparse
import pickle
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from sslzoo.backbones import MODELS, build_model
from sslzoo.checkpoint import FORMAT
from sslzoo.errors import UserError

TIMM_PREFIX = "timm:"  # ckpt=timm:vit_small_patch16_224.dino
HUB_TIMEOUT_S = 5.0  # how long to wait for the model hub before saying it is unreachable
# Keys of the released files that are not backbone weights: the projection heads
# (DINO/iBOT ``head``, MoCo v3's ``head`` on ViTs and ``fc`` on ResNets), a torchvision
# ResNet's ``fc`` classifier, and iBOT's mask token (``masked_embed``, a training-only input).
DROPPED_PREFIXES = ("head.", "fc.", "masked_embed")
# The parts of a file that hold a backbone, the default first: DINO/iBOT evaluate the teacher
# (eval_knn.py / eval_linear.py ``--checkpoint_key teacher``), MoCo v3 its base encoder
# (main_lincls.py keeps ``module.base_encoder``).
DINO_PARTS = ("teacher", "student")
MOCO_PARTS = ("base_encoder", "momentum_encoder")
# The architectures the official files name (their ``args.arch`` / ``arch``) as our backbones.
# DINO's and iBOT's ViT-S has 6 heads (DeiT-S, as timm's); MoCo v3's has 12 (vits.py).
DINO_ARCHS = {("vit_small", 16): "vit_small_patch16_224", ("vit_base", 16): "vit_base_patch16_224"}
MOCO_ARCHS = {"vit_small": "vit_small_12h_patch16_224", "vit_base": "vit_base_patch16_224", "resnet50": "resnet50"}
MAE_ARCHS = {"mae_vit_base_patch16": "vit_base_patch16_224"}  # models_mae.py; ViT-L/H are not registered here
# MAE's pre-training decoder and mask token (models_mae.py): not part of the encoder.
MAE_DECODER_PREFIXES = ("decoder_", "mask_token")


@dataclass
class Released:
    """A backbone's weights taken out of a released file."""

    state_dict: dict[str, Tensor]
    layout: str  # what the file was recognised as
    part: str | None  # which network of the file (teacher, base_encoder, ...), if it holds several
    arch: str | None  # our backbone name for the architecture the file names, if it names one
    epoch: int | None

    def describe(self) -> dict:
        return {"layout": self.layout, "part": self.part, "file_arch": self.arch, "epoch": self.epoch}


def read(path: Path) -> Any:
    """The file's contents, unpickled with ``weights_only=True``."""
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = next((line for line in str(err).splitlines() if "Unsupported global" in line), None)
        if refused is None:
            raise UserError(f"{path} is not a readable PyTorch checkpoint ({str(err).splitlines()[0]})") from None
        raise UserError(
            f"{path} holds Python objects that a weights-only load refuses ({refused.strip()}); "
            "save its backbone's state_dict alone (the official repos' extract scripts) and pass that"
        ) from None
    except Exception as err:  # noqa: BLE001 - unreadable files fail in many ways
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({type(err).__name__})") from None


def is_sslzoo_checkpoint(contents: Any) -> bool:
    return isinstance(contents, dict) and contents.get("format") == FORMAT


def is_state_dict(tree: Any) -> bool:
    return isinstance(tree, dict) and bool(tree) and all(isinstance(v, Tensor) for v in tree.values())


def strip(state: dict[str, Tensor], *prefixes: str) -> dict[str, Tensor]:
    """Each key without any of ``prefixes`` it starts with (in order: ``module.`` then ``backbone.``)."""
    out = {}
    for key, value in state.items():
        for prefix in prefixes:
            key = key.removeprefix(prefix)
        out[key] = value
    return out


def backbone_only(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v for k, v in state.items() if not k.startswith(DROPPED_PREFIXES)}


def dino_arch(args: Any) -> str | None:
    arch, patch = getattr(args, "arch", None), getattr(args, "patch_size", None)
    if arch == "resnet50":
        return "resnet50"
    return DINO_ARCHS.get((arch, patch))


def pick(name: str, choices: tuple[str, ...], part: str | None, available: list[str]) -> str:
    chosen = part or choices[0]
    if chosen not in available:
        raise UserError(f"part={chosen} is not in this {name}; choose one of {', '.join(available)}")
    return chosen


def released(contents: Any, part: str | None = None) -> Released:
    """The backbone state dict of an official file's ``contents`` (see the module docstring)."""
    if not isinstance(contents, dict):
        raise UserError(f"the file holds a {type(contents).__name__}, not a state dict or a checkpoint dict")
    args = contents.get("args")
    epoch = contents.get("epoch")
    epoch = int(epoch) if isinstance(epoch, int) else None
    if any(isinstance(contents.get(p), dict) for p in DINO_PARTS):  # DINO / iBOT full checkpoint
        available = [p for p in DINO_PARTS if isinstance(contents.get(p), dict)]
        chosen = pick("DINO/iBOT checkpoint", DINO_PARTS, part, available)
        state = backbone_only(strip(contents[chosen], "module.", "backbone."))
        return Released(state, "DINO/iBOT full checkpoint", chosen, dino_arch(args), epoch)
    if "state_dict" not in contents and is_state_dict(contents.get("model")):  # MAE
        if part is not None:
            raise UserError(f"part={part}: an MAE checkpoint holds one encoder; leave part= out")
        state = {k: v for k, v in contents["model"].items() if not k.startswith(MAE_DECODER_PREFIXES)}
        arch = MAE_ARCHS.get(str(getattr(args, "model", None)))
        return Released(backbone_only(strip(state, "module.")), "MAE checkpoint (model)", None, arch, epoch)
    inner = contents.get("state_dict", contents.get("model"))
    if isinstance(inner, dict) and not is_state_dict(contents):
        if any(isinstance(inner.get(p), dict) for p in DINO_PARTS):  # a full checkpoint one level down
            return released({**inner, "args": args, "epoch": epoch}, part)
        moco = [p for p in MOCO_PARTS if any(k.startswith(f"module.{p}.") for k in inner)]
        if moco:
            chosen = pick("MoCo v3 checkpoint", MOCO_PARTS, part, moco)
            prefix = f"module.{chosen}."
            state = backbone_only({k.removeprefix(prefix): v for k, v in inner.items() if k.startswith(prefix)})
            return Released(state, "MoCo v3 checkpoint", chosen, MOCO_ARCHS.get(str(contents.get("arch"))), epoch)
        if part is not None:
            raise UserError(f"part={part}: this file holds one network (state_dict); leave part= out")
        state = backbone_only(strip(inner, "module.", "backbone."))
        return Released(state, "iBOT teacher checkpoint (state_dict)", None, dino_arch(args), epoch)
    if is_state_dict(contents):
        if part is not None:
            raise UserError(f"part={part}: this file is a bare state dict of one network; leave part= out")
        return Released(backbone_only(strip(contents, "module.", "backbone.")), "backbone state dict", None, None, None)
    raise UserError(
        f"unrecognised checkpoint layout (top-level keys: {', '.join(map(str, list(contents)[:6]))}); "
        "expected DINO/iBOT (teacher/student), MoCo v3 (state_dict with module.base_encoder.), MAE (model) "
        "or a bare state dict"
    )


def shape(t: Tensor) -> str:
    return "(" + ", ".join(map(str, t.shape)) + ")"


def load_into(model: nn.Module, state: dict[str, Tensor], backbone: str, source: str, in_chans: int) -> None:
    """Copy ``state`` into ``model`` after checking every key and shape; one line names the first mismatch."""
    family = MODELS.get(backbone)[0]
    others = ", ".join(n for n in MODELS.names() if MODELS.get(n)[0] == family)
    fix = f"pass the backbone= the weights were trained as ({others})"
    expected = model.state_dict()
    for key, target in expected.items():
        if key not in state:
            if key.endswith("num_batches_tracked"):  # a BN counter that converted files often leave out
                state[key] = target
                continue
            if key.startswith("norm.") and "fc_norm." + key.removeprefix("norm.") in state:
                # MAE's fine-tuned classifiers (main_finetune.py --global_pool) replace the final norm by
                # fc_norm over the average-pooled tokens: another network's features, not the encoder's
                raise UserError(
                    f"{source} is a fine-tuned classifier (it has 'fc_norm' in place of '{key}'): "
                    "pass the pre-trained checkpoint (for MAE, mae_pretrain_vit_*.pth)"
                )
            raise UserError(f"{source} has no '{key}', which {backbone} needs: {fix}")
        if state[key].shape != target.shape:
            channels = ""
            if state[key].ndim == 4 and state[key].shape[1] != target.shape[1] and key == first_conv(expected):
                channels = f" (the data has {in_chans} channel(s), the weights {state[key].shape[1]})"
            raise UserError(
                f"'{key}' of {source} is {shape(state[key])} but {backbone} expects {shape(target)}{channels}: {fix}"
            )
    extra = [key for key in state if key not in expected]
    if extra:
        raise UserError(f"{source} has '{extra[0]}' ({len(extra)} keys in all) that {backbone} lacks: {fix}")
    model.load_state_dict(state, strict=True)


def first_conv(state: dict[str, Tensor]) -> str | None:
    return next((k for k, v in state.items() if v.ndim == 4), None)


def choose_backbone(given: str | None, file_arch: str | None, source: str) -> str:
    """``backbone=`` if given (checked against the architecture the file names), else the file's."""
    if given is None:
        if file_arch is None:
            raise UserError(
                f"{source} does not name its architecture: pass backbone= (one of {', '.join(MODELS.names())})"
            )
        return file_arch
    MODELS.get(given)  # an unknown name: one line with the nearest one
    if file_arch is not None and given != file_arch:
        raise UserError(f"{source} was trained as {file_arch} (its arch), not {given}: pass backbone={file_arch}")
    return given


def load_released(
    path: Path, backbone: str | None, part: str | None, in_chans: int, contents: Any = None
) -> tuple[nn.Module, str, dict]:
    """The plain model of ``backbone`` with the official weights of ``path`` (its ``contents`` if already
    read); the backbone's name and what was read."""
    found = released(read(path) if contents is None else contents, part)
    name = choose_backbone(backbone, found.arch, str(path))
    model = build_model(name, in_chans=in_chans)
    load_into(model, found.state_dict, name, str(path), in_chans)
    return model, name, found.describe()


# --------------------------------------------------------------------------- timm's pretrained tags


def hub_reachable(timeout: float = HUB_TIMEOUT_S) -> bool:
    """Whether the Hugging Face hub answers a TCP connection (huggingface_hub retries for minutes offline)."""
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def load_timm(tag: str, backbone: str | None, in_chans: int) -> tuple[nn.Module, str, dict]:
    """``ckpt=timm:ARCH.TAG``: timm's pretrained weights (downloaded from the hub), onto our ``ARCH``."""
    import timm

    if tag not in timm.list_pretrained():
        raise UserError(f"'{tag}' is not one of timm's pretrained tags (e.g. vit_small_patch16_224.dino)")
    arch = tag.split(".")[0]
    if arch not in MODELS:
        raise UserError(f"timm's {arch} is not one of our backbones ({', '.join(MODELS.names())})")
    name = choose_backbone(backbone, arch, f"timm:{tag}")
    if not hub_reachable():
        raise UserError(
            f"cannot reach the model hub to download timm:{tag}; download its weights where the hub is "
            "reachable and pass ckpt=PATH to the file"
        )
    try:
        source = timm.create_model(tag, pretrained=True, num_classes=0, in_chans=in_chans)
    except Exception as err:  # noqa: BLE001 - network and cache failures come in many types
        raise UserError(f"could not fetch timm:{tag} ({type(err).__name__}); pass ckpt=PATH to a local file") from None
    model = build_model(name, in_chans=in_chans)
    load_into(model, backbone_only(source.state_dict()), name, f"timm:{tag}", in_chans)
    return model, name, {"layout": "timm pretrained tag", "part": None, "file_arch": arch, "epoch": None}


def load_weights(
    ckpt: str, backbone: str | None, part: str | None, in_chans: int, contents: Any = None
) -> tuple[nn.Module, str, dict]:
    """Official weights named by ``ckpt=`` (a file, or ``timm:TAG``) on our backbone, in eval mode."""
    if ckpt.startswith(TIMM_PREFIX):
        if part is not None:
            raise UserError("part= applies to checkpoint files; timm's tags hold one network")
        model, name, info = load_timm(ckpt.removeprefix(TIMM_PREFIX), backbone, in_chans)
    else:
        model, name, info = load_released(Path(ckpt), backbone, part, in_chans, contents)
    return model.eval(), name, info
