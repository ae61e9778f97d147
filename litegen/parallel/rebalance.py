"""Even out attention cost across data-parallel ranks by moving packed clips between them.

Each rank's loader packs its own clips; a pack of one long clip and a pack of many short ones
can hold the same tokens yet differ several-fold in attention cost sum(s_i^2), and the slowest
rank sets the step time. Before each packed micro-batch the ranks share their clip sizes (one
small all_gather_object), all compute the same plan (litegen.data.balance.balance_clips) and
send the clips that change rank with one all_to_all. Clips carry their caption, key and
metadata, and their text embedding when the dataset has them.
"""

from typing import Any, Optional

import torch
import torch.distributed as dist

from litegen.data.balance import balance_clips
from litegen.parallel.distributed import is_distributed

_PER_CLIP = ("captions", "keys", "meta", "epochs", "sources", "tokens")


def _clip_info(batch: dict, name: str) -> list[dict[str, Any]]:
    info = []
    for i, clip in enumerate(batch[name]):
        row = {field: batch[field][i] for field in _PER_CLIP}
        row["shape"] = list(clip.shape)
        if "text_emb" in batch:
            row["text_shape"] = list(batch["text_emb"][i].shape)
        info.append(row)
    return info


def _flat(batch: dict, name: str, i: int) -> torch.Tensor:
    parts = [batch[name][i].reshape(-1).float()]
    if "text_emb" in batch:
        parts += [batch["text_emb"][i].reshape(-1).float(), batch["text_mask"][i].reshape(-1).float()]
    return torch.cat(parts)


def _numel(row: dict) -> int:
    n = torch.Size(row["shape"]).numel()
    if "text_shape" in row:
        length, width = row["text_shape"]
        n += length * width + length
    return n


def _unflat(flat: torch.Tensor, row: dict) -> tuple[torch.Tensor, Optional[tuple[torch.Tensor, torch.Tensor]]]:
    n = torch.Size(row["shape"]).numel()
    clip = flat[:n].view(row["shape"])
    if "text_shape" not in row:
        return clip, None
    length, width = row["text_shape"]
    emb = flat[n:n + length * width].view(length, width)
    mask = flat[n + length * width:n + length * width + length] > 0.5
    return clip, (emb, mask)


def rebalance_packed(batch: dict, budget: int, device: torch.device, group=None) -> dict:
    """The packed batch this rank should train on after balancing attention cost over `group`.

    Every rank of the group must call it at the same micro-step. Returns the batch unchanged in a
    single process. The clips' dtype becomes float32 (as the loader produces them).
    """
    if not is_distributed():
        return batch
    name = "latents" if "latents" in batch else "pixels"
    me, world = dist.get_rank(group), dist.get_world_size(group)
    infos: list[list[dict]] = [None] * world  # type: ignore[list-item]
    dist.all_gather_object(infos, _clip_info(batch, name), group=group)
    plan = balance_clips([[row["tokens"] for row in rank] for rank in infos], budget)
    send = []
    for dest in range(world):
        mine = [i for src, i in plan[dest] if src == me]
        send.append(torch.cat([_flat(batch, name, i) for i in mine]).to(device) if mine
                    else torch.empty(0, device=device))
    sizes = [sum(_numel(infos[src][i]) for s, i in plan[me] if s == src) for src in range(world)]
    recv = torch.empty(sum(sizes), device=device)
    # all_to_all_single: gloo's list all_to_all wants equal sizes, the clips rarely are.
    dist.all_to_all_single(recv, torch.cat(send), output_split_sizes=sizes,
                           input_split_sizes=[len(t) for t in send], group=group)
    return _rebuilt(batch, name, plan[me], infos, list(recv.split(sizes)))


def _rebuilt(batch: dict, name: str, mine: list[tuple[int, int]], infos: list[list[dict]],
             recv: list[torch.Tensor]) -> dict:
    offsets = [0] * len(recv)
    clips, texts, rows = [], [], []
    for src, i in mine:  # sorted by (src, i): the order each source packed its buffer in
        row = infos[src][i]
        n = _numel(row)
        clip, text = _unflat(recv[src][offsets[src]:offsets[src] + n], row)
        offsets[src] += n
        clips.append(clip)
        texts.append(text)
        rows.append(row)
    out = {k: v for k, v in batch.items() if k not in _PER_CLIP + (name, "text_emb", "text_mask")}
    out[name] = clips
    for field in _PER_CLIP:
        out[field] = [row[field] for row in rows]
    if texts and texts[0] is not None:
        out["text_emb"] = torch.stack([t[0] for t in texts])
        out["text_mask"] = torch.stack([t[1] for t in texts])
    return out
