"""Pretrained T5-family caption encoders from transformers (T5 v1.1, UMT5 as in Wan, mT5).

Padding is always to max_length and padded positions are zeroed, as Wan does after the encoder.
"""

import json
from pathlib import Path
from typing import Any, Union

import torch

from litegen.encoders.base import (TextEncoder, check_captions, dtype_name, folder_fingerprint,
                                   resolve_dtype, zero_padding)

# config.json model_type -> encoder-only class in transformers.
_ENCODER_CLASSES = {"t5": "T5EncoderModel", "umt5": "UMT5EncoderModel", "mt5": "MT5EncoderModel"}


def _import_transformers():
    try:
        import transformers
    except ImportError as err:
        raise ImportError("the t5 text encoder needs the optional extra: pip install litegen[hf]") from err
    return transformers


def resolve_folders(path: Union[str, Path]) -> tuple[Path, Path]:
    """(model folder, tokenizer folder): one folder holding both, or a diffusers pipeline folder
    (Wan's layout) with text_encoder/ and tokenizer/ inside."""
    root = Path(path)
    if (root / "config.json").is_file():
        return root, root
    if (root / "text_encoder" / "config.json").is_file():
        return root / "text_encoder", root / "tokenizer"
    raise FileNotFoundError(f"no config.json in {root} nor in {root / 'text_encoder'} (encoders.text.path "
                            f"must name a local folder; hub ids are not downloaded)")


def _dtype_kwargs(transformers, dtype: torch.dtype) -> dict:
    # transformers 4.56 renamed torch_dtype to dtype and 5.x warns on the old name.
    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


class HFTextEncoder(TextEncoder):
    """A frozen T5/UMT5/mT5 encoder plus its tokenizer, loaded from local folders only."""

    def __init__(self, path: str, max_length: int = 512, dtype: Union[str, torch.dtype] = "fp32",
                 device: Union[str, torch.device] = "cpu"):
        self.model_dir, self.tokenizer_dir = resolve_folders(path)
        self.model_type = json.loads((self.model_dir / "config.json").read_text()).get("model_type")
        if self.model_type not in _ENCODER_CLASSES:
            raise ValueError(f"{self.model_dir / 'config.json'} has model_type {self.model_type!r}; "
                             f"supported: {sorted(_ENCODER_CLASSES)}")
        self.max_length = max_length
        self.dtype = resolve_dtype(dtype)
        self.device = torch.device(device)
        self.tokenizer, self.model = self._load()
        self.dim = self.model.config.d_model

    def _load(self):
        transformers = _import_transformers()
        tokenizer = transformers.AutoTokenizer.from_pretrained(self.tokenizer_dir, local_files_only=True)
        if tokenizer.pad_token_id is None:
            raise ValueError(f"the tokenizer in {self.tokenizer_dir} has no pad token; "
                             f"padding to max_length needs one")
        cls = getattr(transformers, _ENCODER_CLASSES[self.model_type])
        model = cls.from_pretrained(self.model_dir, local_files_only=True, **_dtype_kwargs(transformers, self.dtype))
        return tokenizer, model.to(self.device).eval().requires_grad_(False)

    def tokenize(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenizer(captions, padding="max_length", max_length=self.max_length, truncation=True,
                               add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        mask = batch["attention_mask"].bool()
        # A tokenizer without an EOS gives "" no token at all; let its first pad token stand in as
        # the (still deterministic) null condition so every row has something to attend to.
        mask[:, 0] |= ~mask.any(dim=1)
        return batch["input_ids"], mask

    @torch.no_grad()
    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        check_captions(captions)
        if not captions:  # the tokenizer rejects an empty batch
            mask = torch.zeros(0, self.max_length, dtype=torch.bool, device=self.device)
            return torch.zeros(0, self.max_length, self.dim, device=self.device), mask
        ids, mask = self.tokenize(captions)
        ids, mask = ids.to(self.device), mask.to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        return zero_padding(hidden.float(), mask), mask

    def signature(self) -> dict[str, Any]:
        return {"kind": "t5", "model_type": self.model_type, "dim": self.dim, "max_length": self.max_length,
                "dtype": dtype_name(self.dtype), "model_fingerprint": folder_fingerprint(self.model_dir),
                "tokenizer_fingerprint": folder_fingerprint(self.tokenizer_dir)}
