"""SigLIP vision tower; module names equal ``SiglipVisionModel``'s keys."""

from __future__ import annotations

from torch import Tensor, nn

from ..runtime.model.config import VisionConfig
from .attention import full_attention


def activation(name: str) -> nn.Module:
    """The Hugging Face activation named ``name``."""
    table = {
        "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
        "gelu_fast": lambda: nn.GELU(approximate="tanh"),
        "gelu_new": lambda: nn.GELU(approximate="tanh"),
        "gelu": nn.GELU,
        "silu": nn.SiLU,
    }
    if name not in table:
        raise ValueError(f"unsupported activation {name!r}")
    return table[name]()


class SiglipVisionEmbeddings(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, config.patch_size, stride=config.patch_size
        )
        self.position_embedding = nn.Embedding(config.num_patches, config.hidden_size)

    def forward(self, pixels: Tensor) -> Tensor:
        # pixels: [F, 3, H, W] -> [F, N, Dv]
        patches = self.patch_embedding(pixels).flatten(2).transpose(1, 2)
        return patches + self.position_embedding.weight


class SiglipAttention(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        shape = (b, n, self.num_heads, d // self.num_heads)
        q, k, v = (p(x).view(shape) for p in (self.q_proj, self.k_proj, self.v_proj))
        return self.out_proj(full_attention(q, k, v).reshape(b, n, d))


class SiglipMLP(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SiglipEncoderLayer(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = SiglipAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = SiglipMLP(config)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class SiglipEncoder(nn.Module):
    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            SiglipEncoderLayer(config) for _ in range(config.num_hidden_layers)
        )


class SiglipVisionTransformer(nn.Module):
    """``vision_model.*`` of a SigLIP checkpoint (the pooling head is not used)."""

    def __init__(self, config: VisionConfig, feature_layer: int = -1) -> None:
        super().__init__()
        self.config = config
        self.feature_layer = feature_layer
        self.embeddings = SiglipVisionEmbeddings(config)
        self.encoder = SiglipEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixels: Tensor) -> Tensor:
        """Patch features of each frame.

        pixels: [F, 3, H, W] normalised frames -> [F, N, Dv]. With
        ``feature_layer == -1`` the last hidden state after the post-layernorm;
        otherwise hidden state ``feature_layer`` (0 = embeddings) as LLaVA
        selects it, without the post-layernorm.
        """
        count = num_vision_layers_used(self.config, self.feature_layer)
        x = self.embeddings(pixels)
        for layer in self.encoder.layers[:count]:
            x = layer(x)
        return self.post_layernorm(x) if self.feature_layer == -1 else x


def num_vision_layers_used(config: VisionConfig, feature_layer: int) -> int:
    """How many encoder layers run for ``feature_layer`` (unused ones can be dropped)."""
    total = config.num_hidden_layers
    if feature_layer == -1:
        return total
    count = feature_layer if feature_layer >= 0 else total + 1 + feature_layer
    if not 0 <= count <= total:
        raise ValueError(f"vision_feature_layer {feature_layer} outside the {total}-layer tower")
    return count


__all__ = ["SiglipVisionTransformer", "activation", "num_vision_layers_used"]
