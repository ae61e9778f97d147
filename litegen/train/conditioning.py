"""Turn a batch's captions (or precomputed text embeddings) into the network's conditioning."""

import torch

from litegen.objectives import Cond
from litegen.objectives.guidance import drop_captions


def encode_captions(text_encoder, captions: list[str], device: torch.device) -> Cond:
    emb, mask = text_encoder.encode(captions)
    return Cond(emb.to(device=device, dtype=torch.float32), mask.to(device))


def batch_cond(batch: dict, text_encoder, dropout: float, generator: torch.Generator,
               null_cond: Cond, device: torch.device) -> Cond:
    """Conditioning for one training batch, with captions dropped to the null condition for CFG."""
    captions = batch["captions"]
    if "text_emb" not in batch:
        return encode_captions(text_encoder, drop_captions(captions, dropout, generator), device)
    # Precomputed embeddings: replace dropped rows by the null embedding (same L as the encoder).
    dropped = [c == "" for c in drop_captions(captions, dropout, generator)]
    keep = torch.tensor([not d for d in dropped], device=device)
    emb, mask = batch["text_emb"].to(device, torch.float32), batch["text_mask"].to(device)
    emb = torch.where(keep[:, None, None], emb, null_cond.context[:1])
    mask = torch.where(keep[:, None], mask, null_cond.context_mask[:1])
    return Cond(emb, mask)
