"""Pieces several verifiers share: the MLP reward head and tokenizer loading/encoding.

Image preprocessing lives in `lotts.verifiers._transforms`, one pipeline per official scorer.
"""
from __future__ import annotations

import html
import importlib
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

# Index layouts of the released heads' `nn.Sequential` (the Linear slots only):
# Linear, Dropout, Linear, Dropout, Linear, Dropout, Linear, Linear  (ReLUs commented out;
# sac+logos+ava1-l14-linearMSE.pth, ava+logos-l14-linearMSE.pth and ImageReward's `mlp`);
# Linear, ReLU, Dropout, ... , Linear, ReLU, Linear  (ava+logos-l14-reluMSE.pth, whose
# `simple_inference.py` of June 2022 ran it with the ReLUs).
LINEAR_LAYOUT = (0, 2, 4, 6, 7)
RELU_LAYOUT = (0, 3, 6, 9, 11)
HEAD_ACTIVATIONS = ("auto", "none", "relu")


class MLPHead(nn.Module):
    """The reward head of the LAION aesthetic predictor and of ImageReward.

    Linears at the state dict's `layers.{i}` slots (widths from the tensors, so tiny test heads
    load like the real ones), Dropout slots are identities at inference, and with `relu` a ReLU
    after every Linear but the last. `activation="auto"` reads the structure off the slot
    indices: `LINEAR_LAYOUT` has no activations, `RELU_LAYOUT` has ReLUs; any other layout
    needs an explicit "none" or "relu".
    """

    def __init__(self, shapes: Mapping[int, tuple[int, int]], relu: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleDict({str(i): nn.Linear(shapes[i][1], shapes[i][0])
                                     for i in sorted(shapes)})
        self.relu = relu
        self.in_features = shapes[min(shapes)][1]

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor], prefix: str = "layers.",
                        activation: str = "auto") -> MLPHead:
        """Build from weights keyed `{prefix}{i}.weight/bias`; extra keys are an error."""
        if activation not in HEAD_ACTIVATIONS:
            raise ValueError(f"unknown head activation {activation!r}; choose from "
                             f"{list(HEAD_ACTIVATIONS)}")
        shapes: dict[int, tuple[int, int]] = {}
        for key, value in state_dict.items():
            index, _, param = key[len(prefix):].partition(".")
            if not key.startswith(prefix) or not index.isdigit() or param not in ("weight", "bias"):
                raise ValueError(f"unexpected key {key!r} in an MLP head state dict")
            if param == "weight":
                shapes[int(index)] = (int(value.shape[0]), int(value.shape[1]))
        if not shapes:
            raise ValueError("no MLP head weights found (expected keys like 'layers.0.weight')")
        head = cls(shapes, relu=_head_relu(tuple(sorted(shapes)), activation))
        local = {f"layers.{key[len(prefix):]}": value for key, value in state_dict.items()}
        head.load_state_dict(local, strict=True)
        return head.eval()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, d) -> (B,) in float32, as both originals run the head on `.float()` features."""
        x = features.float()
        linears = list(self.layers.values())
        for linear in linears[:-1]:
            x = linear(x)
            if self.relu:
                x = torch.relu(x)
        return linears[-1](x)[:, 0]


def _head_relu(layout: tuple[int, ...], activation: str) -> bool:
    if activation != "auto":
        return activation == "relu"
    if layout == LINEAR_LAYOUT:
        return False
    if layout == RELU_LAYOUT:
        return True
    raise ValueError(f"cannot tell the head's activations from its Linear slots {list(layout)} "
                     f"(known: {list(LINEAR_LAYOUT)} without, {list(RELU_LAYOUT)} with ReLUs); "
                     f"pass head_activation='none' or 'relu'")


def load_tokenizer(folder: Path, fallback: type | None = None) -> Any:
    """A tokenizer from a local folder: AutoTokenizer, else `fallback.from_pretrained` (for a
    bare vocab folder without tokenizer_config.json)."""
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError):
        if fallback is None:
            raise
        return fallback.from_pretrained(str(folder), local_files_only=True)


def tokenize(tokenizer: Any, prompts: Sequence[str], max_length: int, device: torch.device
             ) -> dict[str, torch.Tensor]:
    """The tokenizer's own truncation (the end token kept), padded to `max_length` so a
    prompt's tokens never depend on its batch: what ImageReward's, PickScore's and
    open_clip's `tokenize` pass for long prompts."""
    encoded = tokenizer(list(prompts), padding="max_length", truncation=True,
                        max_length=max_length, return_tensors="pt")
    return {key: encoded[key].to(device) for key in ("input_ids", "attention_mask")}


def tokenize_cut(tokenizer: Any, prompts: Sequence[str], max_length: int, device: torch.device
                 ) -> dict[str, torch.Tensor]:
    """torchmetrics `clip_score`'s text path: tokenize without truncation, then cut ids and
    mask to `max_length` positions, so a longer prompt loses its end token. Padded to
    `max_length` (masked), which the causal text tower never reads."""
    encoded = tokenizer(list(prompts), padding=False, truncation=False, verbose=False)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(prompts), max_length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), max_length), dtype=torch.long)
    for row, (row_ids, row_mask) in enumerate(zip(encoded["input_ids"],
                                                  encoded["attention_mask"])):
        kept = min(len(row_ids), max_length)
        ids[row, :kept] = torch.tensor(row_ids[:kept])
        mask[row, :kept] = torch.tensor(row_mask[:kept])
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def open_clip_clean(text: str) -> str:
    """open_clip's `basic_clean` + `whitespace_clean` (HPSv2's tokenizer; lowercasing is left
    to the CLIP tokenizer's normaliser): `ftfy.fix_text` when ftfy is installed, HTML entities
    unescaped twice, whitespace runs collapsed, stripped. Without ftfy, text it would repair
    (mojibake, curly quotes, ligatures, full-width forms) is tokenized as given."""
    try:
        text = importlib.import_module("ftfy").fix_text(text)
    except ImportError:
        if not text.isascii():
            warnings.warn("hpsv2: ftfy is not installed, so this non-ASCII prompt is tokenized "
                          "without open_clip's ftfy.fix_text and may differ from the official "
                          "scorer's ids; `pip install ftfy` to match", stacklevel=2)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def check_vocab(tokenizer: Any, embedding_rows: int, what: str) -> None:
    """Fail early when the tokenizer belongs to another model (ids past the embedding)."""
    if len(tokenizer) > embedding_rows:
        raise ValueError(f"{what}: the tokenizer has {len(tokenizer)} tokens but the model's "
                         f"embedding has {embedding_rows} rows; it is the wrong tokenizer")
