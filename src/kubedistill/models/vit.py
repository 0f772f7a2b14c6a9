"""The DINOv2 vision transformer (without registers), built from timm's layers.

Parameter names are those of the official DINOv2 checkpoints (``cls_token``, ``pos_embed``,
``patch_embed.proj``, ``blocks.{i}.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,mlp.*,ls2.gamma}``, ``norm``),
so an official state_dict loads strictly (its unused ``mask_token`` aside). The forward pass returns only
what distillation needs: the CLS token after the final LayerNorm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import Mlp, PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

# The official position embeddings were trained at 518 px: a 37 x 37 grid of 14 px patches.
PRETRAIN_GRID = 37
# DINOv2 (after DINO) adds 0.1 to the target grid before bicubic resampling to dodge a floating-point
# rounding of the output size; the offset also shifts where the samples fall, so it must be reproduced.
POS_INTERPOLATION_OFFSET = 0.1


@dataclass(frozen=True)
class ViTConfig:
    """Architecture hyperparameters of one DINOv2 backbone."""

    embed_dim: int
    depth: int
    num_heads: int
    ffn: Literal["mlp", "swiglu"] = "mlp"
    mlp_ratio: float = 4.0
    patch_size: int = 14
    pos_grid: int = PRETRAIN_GRID

    def with_pos_grid(self, grid: int) -> ViTConfig:
        return replace(self, pos_grid=grid)


class SwiGLUFFN(nn.Module):
    """SwiGLU feed-forward of ViT-g/14: ``w3(silu(a) * b)`` with ``[a, b] = w12(x)``, hidden width rounded
    like DINOv2's (2/3 of ``hidden_features``, up to a multiple of 8) so its checkpoint shapes fit.

    Accepts timm's ``mlp_layer`` keyword arguments; ``act_layer``, ``norm_layer`` and ``drop`` are unused.
    """

    def __init__(self, in_features: int, hidden_features: int, bias: bool = True, **_unused: object):
        super().__init__()
        hidden = (int(hidden_features * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(in_features, 2 * hidden, bias=bias)
        self.w3 = nn.Linear(hidden, in_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., C) -> (..., C)."""
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


def interpolate_pos_embed(pos_embed: torch.Tensor, height: int, width: int, patch_size: int) -> torch.Tensor:
    """Resample (1, 1 + M*M, D) position embeddings to an image of ``height`` x ``width`` pixels.

    Returns (1, 1 + (height // patch_size) * (width // patch_size), D), in float32 unless returned as is.
    Follows DINOv2's formula exactly: bicubic, no antialiasing, driven by a *scale factor*
    ``(grid + 0.1) / M`` rather than an output size (the factor also sets where samples fall); the table is
    returned untouched when the grid has M*M patches and the image is square.
    """
    grid_h, grid_w = height // patch_size, width // patch_size
    num_pos = pos_embed.shape[1] - 1
    if grid_h * grid_w == num_pos and height == width:
        return pos_embed
    side = math.sqrt(num_pos)
    dim = pos_embed.shape[-1]
    table = pos_embed[:, 1:].float().reshape(1, int(side), int(side), dim).permute(0, 3, 1, 2)
    scale = ((grid_h + POS_INTERPOLATION_OFFSET) / side, (grid_w + POS_INTERPOLATION_OFFSET) / side)
    table = F.interpolate(table, scale_factor=scale, mode="bicubic")
    table = table.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((pos_embed[:, :1].float(), table), dim=1)


class DinoV2ViT(nn.Module):
    """DINOv2 backbone: (B, 3, H, W) normalized images -> (B, D) CLS token after the final LayerNorm.

    H and W need not be multiples of the patch size (14): like a stride-14 convolution, the patch
    embedding ignores the last ``H % 14`` rows and ``W % 14`` columns, so the result equals the reference
    model's on the top-left ``14 * (H // 14)`` x ``14 * (W // 14)`` crop. Both must be at least 14.
    """

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        dim = config.embed_dim
        # img_size=None: no fixed input size, so timm's PatchEmbed neither asserts sizes nor pads.
        self.patch_embed = PatchEmbed(img_size=None, patch_size=config.patch_size, in_chans=3, embed_dim=dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.pos_grid**2, dim))
        self.blocks = nn.ModuleList(_make_block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D); not L2-normalized."""
        _check_images(images, self.config.patch_size)
        height, width = images.shape[-2:]
        patches = self.patch_embed(images)  # (B, N, D)
        tokens = torch.cat((self.cls_token.expand(patches.shape[0], -1, -1), patches), dim=1)
        pos = interpolate_pos_embed(self.pos_embed, height, width, self.config.patch_size)
        tokens = tokens + pos.to(tokens.dtype)
        for block in self.blocks[:-1]:
            tokens = block(tokens)
        # Only the CLS token's output is used, so the last block computes it alone: the same result as
        # block(tokens)[:, 0] at ~1/6 of the block's cost (~7% of a ViT-B/14 forward at 224 px). LayerNorm acts
        # per token, so normalizing the CLS token alone equals norm(tokens)[:, 0].
        return self.norm(cls_only_block(self.blocks[-1], tokens))

    def init_random_(self) -> DinoV2ViT:
        """DINOv2's initialization (layer scale starts at 1.0 by construction); for smoke tests only."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        return self


def cls_only_block(block: Block, tokens: torch.Tensor) -> torch.Tensor:
    """``block(tokens)[:, 0]`` for a timm ``Block``, computed for the CLS token alone: (B, N, D) -> (B, D).

    Keys and values still come from every token; the query, the attention output, the projection and the MLP
    are computed for the first token only.
    """
    attn = block.attn
    batch, num_tokens, dim = tokens.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    normed = block.norm1(tokens)
    weight, bias = attn.qkv.weight, attn.qkv.bias
    q_bias, kv_bias = (None, None) if bias is None else (bias[:dim], bias[dim:])
    q = F.linear(normed[:, :1], weight[:dim], q_bias).reshape(batch, 1, heads, head_dim).transpose(1, 2)
    kv = F.linear(normed, weight[dim:], kv_bias).reshape(batch, num_tokens, 2, heads, head_dim).permute(2, 0, 3, 1, 4)
    k, v = kv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, 1, dim)
    out = attn.proj(attn.norm(out))
    cls = tokens[:, :1] + block.ls1(out)
    cls = cls + block.ls2(block.mlp(block.norm2(cls)))
    return cls[:, 0]


def _make_block(config: ViTConfig) -> nn.Module:
    swiglu = config.ffn == "swiglu"
    return Block(
        dim=config.embed_dim,
        num_heads=config.num_heads,
        mlp_ratio=config.mlp_ratio,
        qkv_bias=True,
        init_values=1.0,  # any non-zero value creates the ls1/ls2 layer-scale parameters the checkpoints hold
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        act_layer=nn.SiLU if swiglu else nn.GELU,
        mlp_layer=SwiGLUFFN if swiglu else Mlp,
    )


def _check_images(images: torch.Tensor, patch_size: int) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
    if min(images.shape[-2:]) < patch_size:
        raise ValueError(
            f"images must be at least {patch_size} x {patch_size} pixels, got {tuple(images.shape)}"
        )
