"""Small Vision Transformer student; also takes token sequences [L, D]."""

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from cake_core.students.registry import StudentArch, register, scaled

DEPTH = 4
HEADS = 4
EMBED_DIM = 128
MLP_RATIO = 4


def patch_size(side: int) -> int:
    """Patch length along one axis: about 4-16 tokens per side for 8-64 px images."""
    if side >= 64:
        return 8
    if side >= 16:
        return 4
    if side >= 4:
        return 2
    return 1


class PatchEmbed(nn.Module):
    """Image [B, C, H, W] -> tokens [B, N, dim] via a strided convolution.

    Sides that are not a multiple of the patch are zero-padded at the bottom / right.
    """

    def __init__(self, channels: int, height: int, width_px: int, dim: int) -> None:
        super().__init__()
        ph, pw = patch_size(height), patch_size(width_px)
        pad_h, pad_w = -height % ph, -width_px % pw
        self.pad: nn.Module = nn.Identity()
        if pad_h or pad_w:
            self.pad = nn.ZeroPad2d((0, pad_w, 0, pad_h))
        self.proj = nn.Conv2d(channels, dim, (ph, pw), stride=(ph, pw))
        self.num_tokens = ((height + pad_h) // ph) * ((width_px + pad_w) // pw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pad(x)).flatten(2).transpose(1, 2)


class TokenEmbed(nn.Module):
    """Sequence [B, L, D] -> tokens [B, L, dim] via a linear projection."""

    def __init__(self, length: int, features: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(features, dim)
        self.num_tokens = length

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Attention(nn.Module):
    """Multi-head self-attention on top of ``F.scaled_dot_product_attention``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.size(0), x.size(1), x.size(2)
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, MLP_RATIO * dim),
            nn.GELU(),
            nn.Linear(MLP_RATIO * dim, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Class token + learned positional embedding, 4 pre-norm blocks, LayerNorm + linear head.

    ``width`` scales the embedding dim (128 x width, rounded to a multiple of the 4 heads);
    depth and head count stay fixed so the model remains a ViT at every size.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        dim = HEADS * scaled(EMBED_DIM // HEADS, width)
        self.embed: PatchEmbed | TokenEmbed
        if len(input_shape) == 3:
            self.embed = PatchEmbed(input_shape[0], input_shape[1], input_shape[2], dim)
        else:
            self.embed = TokenEmbed(input_shape[0], input_shape[1], dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.embed.num_tokens + 1, dim))
        self.blocks = nn.Sequential(*(Block(dim, HEADS) for _ in range(DEPTH)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        cls = self.cls_token.expand(x.size(0), -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        x = self.blocks(x)
        return self.head(self.norm(x[:, 0]))


ARCH = register(
    StudentArch(
        name="vit",
        description=(
            "Small Vision Transformer (depth 4, 4 heads, dim 128 x width) for images "
            "[C, H, W] with patches sized to the image, or token sequences [L, D]."
        ),
        builder=ViT,
    )
)
