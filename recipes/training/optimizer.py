"""The optimiser a recipe asks for (``optim.optimizer``), over the parameters that train."""
from __future__ import annotations

import torch
from torch import nn

from dropbp.recipes.config.schema import OptimSection


def build_optimizer(model: nn.Module, optim: OptimSection) -> torch.optim.Optimizer:
    """AdamW or SGD over ``model``'s parameters that require gradients, at ``optim.lr`` and ``optim.weight_decay``."""
    params = [p for p in model.parameters() if p.requires_grad]
    kind = torch.optim.SGD if optim.optimizer == "sgd" else torch.optim.AdamW
    return kind(params, lr=optim.lr, weight_decay=optim.weight_decay)
