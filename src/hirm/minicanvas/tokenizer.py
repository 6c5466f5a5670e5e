"""Build the real CLIP BPE tokenizer offline from `bpe_simple_vocab_16e6.txt.gz`.

That file ships inside the `clip-anytorch` and `open-clip-torch` wheels. Converted here to the
vocab.json + merges.txt pair that `transformers.CLIPTokenizer` reads, its ids match OpenAI's CLIP
(49,408 tokens: 256 bytes, 256 bytes + "</w>", 48,894 merges, start and end tokens).
The MiniCanvas text encoder ships with the converted files, so this runs only when (re)building it.
"""

from __future__ import annotations

import gzip
from pathlib import Path

from transformers import CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from hirm.minicanvas.registry import TOKENIZER

N_MERGES = 49152 - 256 - 2


def find_bpe_file() -> Path:
    """Locate the BPE file inside an installed clip / open_clip package."""
    import importlib.util

    for pkg, rel in (("clip", "bpe_simple_vocab_16e6.txt.gz"), ("open_clip", "bpe_simple_vocab_16e6.txt.gz")):
        spec = importlib.util.find_spec(pkg)
        if spec is not None and spec.submodule_search_locations:
            for root in spec.submodule_search_locations:
                path = Path(root) / rel
                if path.exists():
                    return path
    raise FileNotFoundError(
        "bpe_simple_vocab_16e6.txt.gz not found: `pip install --no-deps clip-anytorch` provides it"
    )


def build_clip_tokenizer(out_dir: Path, bpe_path: Path | None = None) -> CLIPTokenizer:
    """Write vocab.json/merges.txt converted from the CLIP BPE file and return the tokenizer."""
    bpe_path = bpe_path or find_bpe_file()
    with gzip.open(bpe_path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(m.split()) for m in lines[1 : N_MERGES + 1]]
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    # transformers 5: pass the vocabulary itself (a `vocab_file=` argument silently builds an empty one)
    tok = CLIPTokenizer(
        vocab={t: i for i, t in enumerate(vocab)}, merges=merges,
        model_max_length=77, pad_token="<|endoftext|>",
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out_dir)
    return tok


def load_tokenizer() -> CLIPTokenizer:
    """The shipped CLIP BPE tokenizer (OpenAI's vocabulary and merges, 77 tokens)."""
    return CLIPTokenizer.from_pretrained(TOKENIZER)
