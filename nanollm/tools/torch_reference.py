"""The same GPT-2 model in PyTorch, for side-by-side figures (``nanollm bench``, the
Shakespeare example). PyTorch is optional and never a dependency: import this module only
after checking that ``torch`` imports.

Architecture and initialisation are nanollm's (biases, tanh GELU, tied output layer, N(0, 0.02)
weights, residual projections scaled by 1/sqrt(2 L)); ``bias=False, gelu="none"`` gives
nanoGPT's own choices.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, embedding_dim, num_heads, ffn_hidden_dim, bias, gelu):
        super().__init__()
        c, self.num_heads, self.gelu = embedding_dim, num_heads, gelu
        self.ln1, self.ln2 = nn.LayerNorm(c, bias=bias), nn.LayerNorm(c, bias=bias)
        self.qkv, self.proj = nn.Linear(c, 3 * c, bias=bias), nn.Linear(c, c, bias=bias)
        self.fc, self.fc_proj = nn.Linear(c, ffn_hidden_dim, bias=bias), nn.Linear(ffn_hidden_dim, c, bias=bias)

    def forward(self, x):  # x: (B, T, C)
        b, t, c = x.shape
        heads = (z.view(b, t, self.num_heads, c // self.num_heads).transpose(1, 2)
                 for z in self.qkv(self.ln1(x)).split(c, dim=2))
        y = F.scaled_dot_product_attention(*heads, is_causal=True).transpose(1, 2).reshape(b, t, c)
        x = x + self.proj(y)
        return x + self.fc_proj(F.gelu(self.fc(self.ln2(x)), approximate=self.gelu))


class TorchGPT(nn.Module):
    """idx (B, T), targets (B, T) -> mean cross-entropy loss."""

    def __init__(self, vocab_size, embedding_dim=128, num_layers=4, num_heads=4, ffn_hidden_dim=None,
                 max_seq_len=64, bias=True, gelu="tanh"):
        super().__init__()
        ffn_hidden_dim = 4 * embedding_dim if ffn_hidden_dim is None else ffn_hidden_dim
        self.wte, self.wpe = nn.Embedding(vocab_size, embedding_dim), nn.Embedding(max_seq_len, embedding_dim)
        self.blocks = nn.ModuleList(Block(embedding_dim, num_heads, ffn_hidden_dim, bias, gelu)
                                    for _ in range(num_layers))
        self.ln_f = nn.LayerNorm(embedding_dim, bias=bias)
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * num_layers) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.ln_f(x) @ self.wte.weight.T  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def adamw_for(model, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1):
    """AdamW with nanollm's decay groups: 2-D weights and embeddings decay, the rest do not."""
    decayed = [p for p in model.parameters() if p.dim() >= 2]
    spared = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decayed, "weight_decay": weight_decay},
                              {"params": spared, "weight_decay": 0.0}], lr=lr, betas=betas)
