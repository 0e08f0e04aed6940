"""Exponential moving average of the weights, on torch's AveragedModel.

The decay is warmed up (min(decay, (1 + n) / (10 + n)), as in timm/TF): with a fixed 0.9998 a
short run would average mostly the random initialization. Buffers (BN running statistics) are
averaged too, so the EMA model is a consistent network that can be fused like any other.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel


class ModelEma(AveragedModel):
    """AveragedModel with a warmed-up EMA; `.module` is the averaged network."""

    def __init__(self, model: nn.Module, decay: float = 0.9998):
        super().__init__(model, multi_avg_fn=None, avg_fn=None, use_buffers=True)
        self.decay = decay
        self.module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        n = int(self.n_averaged)
        d = min(self.decay, (1 + n) / (10 + n)) if n > 0 else 0.0
        ema = list(self.module.state_dict().values())
        cur = list(model.state_dict().values())
        floats = [i for i, e in enumerate(ema) if torch.is_floating_point(e)]
        # one fused call over all float tensors instead of ~300 small ones per step
        torch._foreach_lerp_([ema[i] for i in floats], [cur[i] for i in floats], 1 - d)
        for e, c in zip(ema, cur):
            if not torch.is_floating_point(e):
                e.copy_(c)          # num_batches_tracked
        self.n_averaged += 1
