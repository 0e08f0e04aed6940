"""Activation checkpointing per RepVGG block, with BN statistics kept as without it."""
from __future__ import annotations

import contextlib

import torch.nn as nn
from torch.utils.checkpoint import checkpoint


class GradCheckpointed(nn.Module):
    """Runs each RepVGG block under activation checkpointing (memory for compute, big models).

    The recomputation in backward would update BN running statistics a second time; BN
    momentum is zeroed during it, so the statistics match a run without checkpointing.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @staticmethod
    def _recompute_ctx(block):
        @contextlib.contextmanager
        def frozen_bn():
            bns = [m for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
            saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
                     for m in bns]
            for m in bns:
                m.momentum = 0.0
            try:
                yield
            finally:
                for m, (mom, nbt) in zip(bns, saved):
                    m.momentum = mom
                    if nbt is not None:
                        m.num_batches_tracked.copy_(nbt)
        return lambda: (contextlib.nullcontext(), frozen_bn())

    def forward(self, x):
        m = self.model
        x = m.stem(x)
        for stage in m.stages:
            for block in stage:
                x = checkpoint(block, x, use_reentrant=False, context_fn=self._recompute_ctx(block))
        return m.forward_head(x)
