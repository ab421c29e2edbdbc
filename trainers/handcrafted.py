"""Hand-crafted text features of a class set: frozen CLIP's zero-shot class embeddings.

Methods that regularise a learned prompt towards CLIP's own knowledge (KgCoOp's ``w_c^clip``,
FedPGP's ``z_C``, ...) need the normalised text features of ``template.format(classname)`` for the
current class set. They do not depend on any trainable tensor, so they are computed once per class
set (on first use after ``HandcraftedText.set_classnames``) and kept as a non-persistent buffer:
never part of a client's state, rebuilt for a new label space (base -> novel) only when used.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def handcrafted_text_features(clip, classnames: list[str], template: str) -> torch.Tensor:
    """Normalised text features ``(C, D)`` (fp32) of ``template.format(name)`` for each class name.

    ``clip`` is a ``clip.LoadedCLIP``; underscores in class names become spaces (CoOp convention).
    """
    if "{}" not in template:
        raise ValueError(f"hand-crafted template must contain '{{}}' for the class name, got '{template}'")
    if not classnames:
        raise ValueError("hand-crafted text features need at least one class name")
    device = clip.model.logit_scale.device
    tokens = clip.tokenize([template.format(name.replace("_", " ")) for name in classnames]).to(device)
    with torch.autocast(device_type=device.type, enabled=False):  # a constant target: full precision
        return F.normalize(clip.model.encode_text(tokens).float(), dim=-1)


class HandcraftedText(nn.Module):
    """``forward() -> (C, D)``: the hand-crafted text features of the current class set.

    Encoded on first use after ``set_classnames`` (a label-space switch for evaluation only costs
    nothing) and kept as a non-persistent buffer. Features first encoded under ``torch.inference_mode``
    (an evaluation) are copied once when next used outside it, where autograd may save them (a
    classifier whose image features carry gradient, as VPT's).
    """

    def __init__(self, clip, classnames: list[str], template: str):
        super().__init__()
        if "{}" not in template:
            raise ValueError(f"hand-crafted template must contain '{{}}' for the class name, got '{template}'")
        self.clip = clip
        self.template = template
        self.register_buffer("features", None, persistent=False)
        self.set_classnames(classnames)

    def set_classnames(self, classnames: list[str]) -> None:
        self.classnames = list(classnames)
        self.features = None

    def forward(self) -> torch.Tensor:
        if self.features is None:
            self.features = handcrafted_text_features(self.clip, self.classnames, self.template)
        elif self.features.is_inference() and not torch.is_inference_mode_enabled():
            # encoded during an evaluation (inference mode): a normal copy, which autograd may save
            self.features = self.features.clone()
        return self.features
