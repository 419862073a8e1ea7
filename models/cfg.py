"""Label conditioning and classifier-free guidance shared by the diffusion transformers (Latte, ST-DiT) and
the GPT.

A model using ClassConditioned has `self.config` (num_classes; in_channels for forward_with_cfg) and
`self.y_embed` (a models.layers.LabelEmbedder, or None when unconditional), and calls `self.condition(c, y)` on
its conditioning vector c (the diffusion models' timestep embedding; zeros for the GPT, whose label
embedding is added to every token). The GPT guides its logits in generate().
"""
from __future__ import annotations

import torch


def guide(twins: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance of a batch [conditional; unconditional] (twins along dim 0):
    uncond + scale * (cond - uncond). Every model's guidance (diffusion outputs, token logits) goes through here."""
    cond, uncond = twins.chunk(2)
    return uncond + scale * (cond - uncond)


def reanchor(length: int, anchor: int, block: int) -> int:
    """Start of the window a next-token model reads to predict position `length`, given the current `anchor`:
    unchanged while the window [anchor, length) fits in `block` tokens, else its last block // 2 tokens (the
    window is then recomputed from there, as a training window would be). Used by the GPT and Mamba samplers."""
    return anchor if length - anchor <= block else length - max(1, block // 2)


class ClassConditioned:
    def condition(self, c: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """c (B, D) plus the label embedding. A class-conditional model given y=None gets the null label (what
        classifier-free-guidance training shows it for 'no label'), not the timestep embedding alone, which
        training never shows it."""
        if self.y_embed is None:
            return c
        if y is None:
            return c + self.y_embed.table.weight[-1].expand_as(c)  # promotes like the labelled path
        return c + self.y_embed(y, self.training)

    def null_label_like(self, y: torch.Tensor) -> torch.Tensor:
        """The 'no label' for y: an all-zero multi-hot (B, num_classes) or the index num_classes (B,)."""
        return torch.zeros_like(y) if y.dim() == 2 else torch.full_like(y, self.config.num_classes)

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None, scale: float) -> torch.Tensor:
        """Classifier-free guidance on the first C output channels (epsilon, or the velocity of a rectified-flow
        model): out = uncond + scale * (cond - uncond); a learned variance (channels C..2C) comes from the
        conditional pass. y=None or an unconditional model: nothing to guide, one plain pass."""
        if y is None or self.y_embed is None or scale == 1.0:
            return self(x, t, y)
        out = self(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, self.null_label_like(y)]))
        c = self.config.in_channels
        return torch.cat([guide(out[:, :c], scale), out.chunk(2)[0][:, c:]], dim=1)
