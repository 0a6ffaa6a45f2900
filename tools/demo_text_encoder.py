"""Text-encoder folders of RANDOM weights, for the demo, the benchmarks and the tests: a CLIP-style
byte-level vocabulary (byte_level_vocabulary), BPE merges learned from a corpus as CLIP's were
(learn_bpe_merges), a folder in the Stable Diffusion layout that latte_core.TextEncoder reads
(write_random_text_encoder), and the text demo's own encoder (write_caption_text_encoder: the shipped
pretrained/text-clouds).
"""
import json
import os

import numpy as np
from safetensors.numpy import save_file
from tokenizers import pre_tokenizers

from latte_core.atomic import fsync_tree, staged
from latte_core.checkpoint import CheckpointError
from latte_core.text_encoder import (MAX_LENGTH, TOKENIZER_FILES, CLIPTextModel, build_clip_tokenizer,
                                     clip_normalizer, clip_pre_tokenizer, text_settings_from_config)

from .synthetic import CAPTION_DIRECTIONS


def byte_level_vocabulary(merges=(), size=None):
    """A CLIP-style {token: id} vocabulary: the 256 byte-level symbols, each also as a word end, the token of
    each merge ("a b" -> "ab") in order, then <|startoftext|> and <|endoftext|> (CLIP's own order); with
    `size`, unused tokens up to that many (CLIP's embedding table holds 49,408)."""
    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = symbols + [symbol + "</w>" for symbol in symbols]
    tokens += ["".join(merge.split(" ")) for merge in merges] + ["<|startoftext|>", "<|endoftext|>"]
    if size is not None:
        if size < len(tokens):
            raise ValueError(f"size {size} is below the vocabulary's {len(tokens)} tokens")
        tokens += [f"unused{i}" for i in range(size - len(tokens))]
    if len(set(tokens)) != len(tokens):
        raise ValueError("the merges make a token twice")
    return {token: i for i, token in enumerate(tokens)}


def learn_bpe_merges(corpus, max_merges=None):
    """BPE merges ("a b" lines, in rank order) learned from the texts `corpus` as CLIP's were: each text
    split into words as CLIP's tokenizer splits it (normalised, byte-level symbols, the last one marked
    "</w>"), then the most frequent adjacent pair merged, again and again (ties: the pair that sorts first),
    until every word is one token or `max_merges` are made. With byte_level_vocabulary it gives a tokenizer
    that keeps the corpus's words whole and still spells any other text symbol by symbol."""
    normalizer, pre_tokenizer = clip_normalizer(), clip_pre_tokenizer()
    counts = {}
    for text in corpus:
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)):
            symbols = tuple(word[:-1]) + (word[-1] + "</w>",)
            counts[symbols] = counts.get(symbols, 0) + 1
    merges = []
    while max_merges is None or len(merges) < max_merges:
        pairs = {}
        for symbols, count in counts.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] = pairs.get(pair, 0) + count
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(" ".join(best))
        merged = {}
        for symbols, count in counts.items():
            out, i = [], 0
            while i < len(symbols):
                if symbols[i:i + 2] == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + count
        counts = merged
    return merges


def _load_vocab_and_merges(vocab, merges):
    if isinstance(vocab, (str, os.PathLike)):
        with open(vocab, encoding="utf-8") as handle:
            vocab = json.load(handle)
    if isinstance(merges, (str, os.PathLike)):
        with open(merges, encoding="utf-8") as handle:
            merges = [line.rstrip("\n") for line in handle if line.strip() and not line.startswith("#version")]
    return dict(vocab), list(merges)


def write_random_text_encoder(folder, vocab, merges, *, hidden_size=768, num_hidden_layers=12,
                              num_attention_heads=12, intermediate_size=None, hidden_act="quick_gelu",
                              pad_token="<|endoftext|>", seed=0):
    """Write a text-encoder folder in the Stable Diffusion layout (tokenizer/vocab.json, merges.txt,
    tokenizer_config.json; text_encoder/config.json, model.safetensors) whose weights are RANDOM: every
    matrix and embedding drawn from N(0, 0.02²) by a numpy generator seeded with `seed`, LayerNorms at
    one and zero. It encodes nothing meaningful; it has the shape and cost of a real encoder of that size.

    `vocab` is a {token: id} dict or a vocab.json path, `merges` a list of "a b" merge lines or a
    merges.txt path; the vocabulary must hold <|startoftext|>, <|endoftext|> and `pad_token` ("!" as
    SD 2.x). intermediate_size defaults to 4 x hidden_size. The folder appears in one rename, complete;
    an existing non-empty folder is refused. Returns the folder."""
    folder = os.fspath(folder)
    if os.path.isdir(folder) and os.listdir(folder):
        raise CheckpointError(f"{folder}: the folder exists and is not empty; give a new folder")
    vocab, merges = _load_vocab_and_merges(vocab, merges)
    for token in ("<|startoftext|>", "<|endoftext|>", pad_token):
        if token not in vocab:
            raise CheckpointError(f"the vocabulary has no {token!r}: a CLIP tokenizer needs it")
    config = {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model",
              "vocab_size": max(vocab.values()) + 1, "hidden_size": hidden_size,
              "intermediate_size": intermediate_size or 4 * hidden_size, "num_hidden_layers": num_hidden_layers,
              "num_attention_heads": num_attention_heads,
              "max_position_embeddings": MAX_LENGTH, "hidden_act": hidden_act, "layer_norm_eps": 1e-5,
              "bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"],
              "pad_token_id": vocab[pad_token], "random_weights": True}
    settings = text_settings_from_config(config, "the requested encoder")
    rng = np.random.default_rng(seed)
    weights = {}
    for param in CLIPTextModel(**settings).get_parameters():
        if "layer_norm" in param.name and param.name.endswith("weight"):
            weights[param.name] = np.ones(param.shape, np.float32)
        elif param.name.endswith("bias"):
            weights[param.name] = np.zeros(param.shape, np.float32)
        else:
            weights[param.name] = rng.normal(0.0, 0.02, param.shape).astype(np.float32)
    tokenizer_config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_LENGTH, "do_lower_case": True,
                        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                        "pad_token": pad_token}
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    with staged(folder, folder=True) as tmp:
        for sub in ("tokenizer", "text_encoder"):
            os.makedirs(os.path.join(tmp, sub))
        with open(os.path.join(tmp, "tokenizer", "vocab.json"), "w", encoding="utf-8") as handle:
            json.dump(vocab, handle, ensure_ascii=False, allow_nan=False)
        with open(os.path.join(tmp, "tokenizer", "merges.txt"), "w", encoding="utf-8") as handle:
            handle.write("#version: 0.2\n" + "".join(f"{line}\n" for line in merges))
        with open(os.path.join(tmp, "tokenizer", "tokenizer_config.json"), "w") as handle:
            json.dump(tokenizer_config, handle, indent=1, allow_nan=False)
        # the folder must load: its tokenizer files are checked before they are published
        build_clip_tokenizer({"tokenizer_config": os.path.join(tmp, "tokenizer", "tokenizer_config.json"),
                              **{name.split(".")[0]: os.path.join(tmp, "tokenizer", name) for name in TOKENIZER_FILES}})
        with open(os.path.join(tmp, "text_encoder", "config.json"), "w") as handle:
            json.dump(config, handle, indent=1, allow_nan=False)
        save_file(weights, os.path.join(tmp, "text_encoder", "model.safetensors"), metadata={"weights": "random"})
        for sub in ("tokenizer", "text_encoder"):  # the commit flushes the folder's own files only
            fsync_tree(os.path.join(tmp, sub))
    return folder


def write_caption_text_encoder(folder, width=32, layers=4, heads=4, seed=0):
    """The text demo's encoder folder (Stable Diffusion layout): a tokenizer learned from every caption
    the captioned generator writes (learn_bpe_merges: each of their words is one
    token; other text is spelt symbol by symbol) and a CLIP text tower of RANDOM weights, said so in its
    config (random_weights: true). Returns the folder."""
    merges = learn_bpe_merges(sorted(CAPTION_DIRECTIONS))
    return write_random_text_encoder(folder, byte_level_vocabulary(merges), merges, hidden_size=width,
                                     num_hidden_layers=layers, num_attention_heads=heads, seed=seed)
