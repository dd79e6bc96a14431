"""Calibration samples: token windows of a few lengths (length bins) cut from calibration texts.

Texts come from .txt files (one text per file), .jsonl (a "text" field per line) or .json (a list
of strings or of {"text": ...}); directories are searched for those files. The texts are joined
into one token stream (separated by the EOS token) and each sample is a window of exactly the bin
length, taken at evenly spread offsets so that samples of a bin differ.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch


def length_bins(max_seqlen: int, num_bins: int, min_seqlen: int = 128) -> list[int]:
    """Powers of two ending at max_seqlen (e.g. 4096, 4 bins -> 512, 1024, 2048, 4096)."""
    if max_seqlen < 1 or num_bins < 1:
        raise ValueError("max_seqlen and num_bins must be >= 1")
    bins = []
    length = max_seqlen
    while len(bins) < num_bins and length >= min(min_seqlen, max_seqlen):
        bins.append(length)
        length //= 2
    return sorted(bins)


def _read_file(path: Path) -> list[str]:
    if path.suffix == ".jsonl":
        texts = []
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    item = json.loads(line)
                    texts.append(item["text"] if isinstance(item, dict) else str(item))
        return texts
    if path.suffix == ".json":
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of strings or of {{'text': ...}}")
        return [d["text"] if isinstance(d, dict) else str(d) for d in data]
    return [path.read_text(errors="replace")]


def load_texts(paths: Iterable[str]) -> list[str]:
    texts: list[str] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            files = sorted(f for f in path.rglob("*") if f.suffix in (".txt", ".jsonl", ".json", ".md"))
            for f in files:
                texts.extend(_read_file(f))
        elif path.exists():
            texts.extend(_read_file(path))
        else:
            raise FileNotFoundError(f"calibration texts: {path} does not exist")
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("calibration texts: no text found")
    return texts


def token_stream(tokenizer, texts: Sequence[str]) -> torch.Tensor:
    sep = [tokenizer.eos_token_id] if getattr(tokenizer, "eos_token_id", None) is not None else []
    ids: list[int] = []
    for t in texts:
        ids.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        ids.extend(sep)
    return torch.tensor(ids, dtype=torch.long)


def windows(stream: torch.Tensor, bins: Sequence[int], samples_per_bin: int,
            bos_token_id: Optional[int] = None) -> list[tuple[torch.Tensor, int]]:
    """[(ids [1, L], L)] for every bin L and sample."""
    out = []
    for length in bins:
        body = length - (1 if bos_token_id is not None else 0)
        if len(stream) < body:
            warnings.warn(f"calibration texts hold {len(stream)} tokens, fewer than the {length}-token bin: "
                          "the text is repeated to fill it", stacklevel=2)
            reps = -(-body // max(len(stream), 1))
            src = stream.repeat(reps)
        else:
            src = stream
        span = len(src) - body
        for i in range(samples_per_bin):
            start = (span * i) // max(samples_per_bin - 1, 1) if samples_per_bin > 1 else 0
            ids = src[start:start + body]
            if bos_token_id is not None:
                ids = torch.cat([torch.tensor([bos_token_id]), ids])
            out.append((ids.unsqueeze(0), length))
    return out


def random_samples(vocab_size: int, bins: Sequence[int], samples_per_bin: int, seed: int = 0):
    """Random token ids (for smoke tests and models without a tokenizer)."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, vocab_size, (1, length), generator=g), length)
            for length in bins for _ in range(samples_per_bin)]
