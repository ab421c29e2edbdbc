"""CE-LoRA: tri-matrix LoRA with only the small r x r matrix shared, and personalised aggregation.

Li et al., "Communication-Efficient and Personalized Federated Foundation Model Fine-Tuning via
Tri-Matrix Adaptation". Every adapted weight becomes ``W + (alpha / r) A C B`` with ``A (in, r)``,
``C (r, r)``, ``B (r, out)`` (``trainers/lora.py``). Only C leaves the client: an upload is
``r * r * 4`` bytes per adapted weight. A and B are personal.

Deviations from the published code (REFERENCE §8, pitfall 10), and why:

* Published init ``A ~ N(0, 1e-3)``, ``C = I``, ``B = 0`` with only C trainable gives C an exactly
  zero gradient (dL/dC = A^T x^T g B^T = 0 while B = 0): nothing is learned. Default ``INIT
  "zero_c"``: ``A ~ N(0, 1/in)``, ``B ~ N(0, 1/r)``, ``C = 0`` so the model starts as the frozen CLIP
  and C learns from the first step; ``INIT "published"`` keeps the published init for comparison.
* ``TRAIN_AB True`` (default): A and B are trained locally as personal tensors (the paper: A and B
  stay on the client). ``False``: A and B are frozen random projections (the published
  ``train_c_only``). A, B start from the same seeded draw on every client, so the shared C matrices
  of different clients live in the same bases and can be averaged.
* Server: ``federated/aggregation_personalized.py`` (formula and its reasons in its docstring). The
  data-space statistics (per-class counts and means of normalised frozen image features) are this
  method's ``side_information``: computed on the client from its training loader the first time the
  client trains, sent once with its update (in process and over Flower alike) and handed to the
  aggregator by the coordinator. No raw data leaves the client.

Loss, evaluation and targets are FLoRA's (``trainers/flora.py``): contrastive loss over the class
prompts by default, text tower attention output projections, rank 2.
"""
from __future__ import annotations

import torch
from yacs.config import CfgNode as CN

from dassl.engine import TRAINER_REGISTRY
from federated.aggregation_personalized import SimilarityPersonalized, Statistics, class_feature_statistics
from trainers.flora import LoRATrainer, lora_cfg_node
from trainers.lora import LoRAFactors, init_tri_lora


@TRAINER_REGISTRY.register()
class CELoRA(LoRATrainer):
    """Tri-matrix LoRA; C shared and personally aggregated, A and B personal."""

    CFG_NODE = "CELORA"
    TRI = True
    SHARED = ("*.C",)  # only the r x r matrices C

    @classmethod
    def cfg_defaults(cls) -> CN:
        node: CN = lora_cfg_node(rank=2, alpha=32.0, scaling="alpha_over_r")
        node.INIT = "zero_c"  # zero_c | published
        node.TRAIN_AB = True
        node.AGG_LAMBDA = 0.5  # weight of parameter vs data similarity
        node.AGG_TEMPERATURE = 0.2
        return node

    def init_factors(self, factors: list[LoRAFactors]) -> None:
        init_tri_lora(factors, str(self.tcfg.INIT), self._init_generator)
        for f in factors:
            f.A.requires_grad_(bool(self.tcfg.TRAIN_AB))
            f.B.requires_grad_(bool(self.tcfg.TRAIN_AB))

    def build_aggregator(self):
        if self.cfg.FED.AGGREGATION:
            return super().build_aggregator()
        return SimilarityPersonalized(self.cfg)

    @torch.no_grad()
    def side_information(self, loader) -> Statistics:
        """Per-class counts and means of the client's normalised frozen image features (what the
        aggregator's data similarity needs), from the loader the client first trains on."""
        feats, labels = [], []
        for batch in loader:
            if "feat" in batch:
                feats.append(batch["feat"].float())
            else:
                images, _ = self.parse_batch_train(batch)
                with self.autocast():
                    feats.append(self.model.clip.model.encode_image(images).float().cpu())
            labels.append(batch["label"])
        return class_feature_statistics(torch.cat(feats), torch.cat(labels), self.num_classes)
