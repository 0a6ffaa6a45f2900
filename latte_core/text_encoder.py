"""The CLIP text encoder that text-conditioned Latte reads its captions through, in MindSpore.

The network is Hugging Face's `CLIPTextModel` (token + position embeddings, pre-LayerNorm transformer
layers with a causal mask, a final LayerNorm; inference only) and its parameter names are that model's
(embeddings.token_embedding.weight, encoder.layers.{i}.self_attn.q_proj.weight, final_layer_norm.bias,
...), so published weights load one-to-one; Latte conditions on `last_hidden_state`, (N, 77, D).

The tokenizer is transformers 5.x's `CLIPTokenizer` pipeline rebuilt on Hugging Face's `tokenizers`
library (torch-free) from the folder's vocab.json + merges.txt: NFC, runs of whitespace to one space,
lower case, CLIP's word pattern, byte-level BPE with "</w>" word ends, start/end tokens, the folder's
special tokens (SD 2.x pads with "!", a special token there), padding and truncation to 77 tokens, as
the official Latte's FrozenCLIPEmbedder calls it.

    encoder = TextEncoder.from_pretrained("stable-diffusion-v1-5")   # or a flat clip-vit-large-patch14
    embeddings = encoder.encode(["clouds drifting left"])             # (1, 77, 768) float32

Folders: the Stable Diffusion pipeline layout (tokenizer/ + text_encoder/) or one flat folder holding
the same files (openai/clip-vit-large-patch14: a CLIPModel config.json whose `text_config` is the text
tower; its vision_model.* weights are ignored). tools/demo_text_encoder.py writes such folders with
RANDOM weights (tests, benchmarks, the demo's small encoder).
"""
import hashlib
import json
import logging
import math
import os
import warnings

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import initializer
from tokenizers import AddedToken, Regex, Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

from .atomic import sha256_of
from .checkpoint import CheckpointError, load_weights
from .errors import UserError, bounded, describe_value, is_integer
from .layers import Dense, EmbeddingTable
from .runtime import prefer_avx2_onednn
from .text_identity import TextEncoderError, TextEncoderIdentity

logger = logging.getLogger(__name__)

MAX_LENGTH = 77  # tokens per prompt, as the reference pads and truncates
ACTIVATIONS = ("quick_gelu", "gelu")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("vocab.json", "merges.txt")
TOKENIZER_CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")

# CLIPTextConfig's defaults, used for keys a config leaves out (as transformers does)
TEXT_CONFIG_DEFAULTS = {
    "vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
    "num_attention_heads": 8, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
# keys by which other transformers models describe an architecture this tower does not have, with the
# values that mean "as CLIP": any other value is refused by name (other unknown keys are ignored)
CLIP_ONLY_VALUES = {
    "position_embedding_type": ("absolute",), "add_cross_attention": (False,), "is_decoder": (False,),
    "is_encoder_decoder": (False,), "rope_scaling": (None,), "rope_theta": (None,), "attention_bias": (True,),
    "qkv_bias": (True,),
}
MODEL_TYPES = ("clip_text_model", "clip")
ARCHITECTURES = ("CLIPTextModel", "CLIPTextModelWithProjection", "CLIPModel")
# weights of a CLIPModel / CLIPTextModelWithProjection that the text tower's last_hidden_state never uses
_UNUSED_WEIGHTS = ("vision_model.", "visual_projection.", "text_projection.", "logit_scale")
_SPECIAL_TOKENS = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                   "pad_token": "<|endoftext|>"}
# CLIP's pre-tokenizer: the special tokens, English contractions, letter runs, single digits, other runs
_CLIP_WORDS = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_MASKED = -1e30  # additive causal mask; finite, so a masked score's exp is 0, never NaN


#################################################################################
#                               The text transformer                             #
#################################################################################

class LayerNorm(nn.Cell):
    """LayerNorm over the last axis with parameters named weight / bias, as torch.nn.LayerNorm's."""

    def __init__(self, width, eps):
        super().__init__()
        self.norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)
        self.weight = Parameter(initializer("ones", (width,), ms.float32), name="weight")
        self.bias = Parameter(initializer("zeros", (width,), ms.float32), name="bias")

    def construct(self, x):
        return self.norm(x, self.weight, self.bias)[0]


def quick_gelu(x):
    return x * ops.sigmoid(1.702 * x)


def gelu(x):
    return 0.5 * x * (1.0 + ops.erf(x * (1.0 / math.sqrt(2.0))))


class CLIPAttention(nn.Cell):
    """Causal multi-head self-attention over the 77 token positions."""

    def __init__(self, width, heads, init=None):
        super().__init__()
        self.q_proj, self.k_proj = Dense(width, width, init=init), Dense(width, width, init=init)
        self.v_proj, self.out_proj = Dense(width, width, init=init), Dense(width, width, init=init)
        self.heads, self.head_dim = heads, width // heads
        self.scale = self.head_dim ** -0.5
        self.causal_mask = Tensor(np.triu(np.full((MAX_LENGTH, MAX_LENGTH), _MASKED, np.float32), 1))

    def _split_heads(self, x, b):
        return x.reshape(b, MAX_LENGTH, self.heads, self.head_dim).swapaxes(1, 2)  # (N, H, 77, d)

    def construct(self, x):
        b, _, width = x.shape
        q = self._split_heads(self.q_proj(x) * self.scale, b)
        k, v = self._split_heads(self.k_proj(x), b), self._split_heads(self.v_proj(x), b)
        scores = ops.matmul(q, k.swapaxes(-1, -2)) + self.causal_mask  # (N, H, 77, 77): no look-ahead
        out = ops.matmul(ops.softmax(scores, axis=-1), v)  # (N, H, 77, d)
        return self.out_proj(out.swapaxes(1, 2).reshape(b, MAX_LENGTH, width))  # (N, 77, D)


class CLIPMLP(nn.Cell):
    def __init__(self, width, intermediate, activation, init=None):
        super().__init__()
        self.fc1 = Dense(width, intermediate, init=init)
        self.fc2 = Dense(intermediate, width, init=init)
        self.activation = quick_gelu if activation == "quick_gelu" else gelu

    def construct(self, x):
        return self.fc2(self.activation(self.fc1(x)))


class CLIPEncoderLayer(nn.Cell):
    """Pre-LayerNorm block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, width, heads, intermediate, activation, eps, init=None):
        super().__init__()
        self.layer_norm1 = LayerNorm(width, eps)
        self.self_attn = CLIPAttention(width, heads, init)
        self.layer_norm2 = LayerNorm(width, eps)
        self.mlp = CLIPMLP(width, intermediate, activation, init)

    def construct(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))  # (N, 77, D)


class CLIPEmbeddings(nn.Cell):
    def __init__(self, vocab_size, width, positions, init=None):
        super().__init__()
        self.token_embedding = EmbeddingTable(vocab_size, width, init=init)
        self.position_embedding = EmbeddingTable(positions, width, init=init)
        self.position_ids = Tensor(np.arange(MAX_LENGTH, dtype=np.int32))

    def construct(self, input_ids):
        return self.token_embedding(input_ids) + self.position_embedding(self.position_ids)  # (N, 77, D)


class _Layers(nn.Cell):
    """The transformer layers, under the name `encoder.layers` of the published weights."""

    def __init__(self, layers):
        super().__init__()
        self.layers = nn.CellList(layers)

    def construct(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class CLIPTextModel(nn.Cell):
    """input_ids (N, 77) int32 -> last_hidden_state (N, 77, D).

    random_init=False builds the weights as zeros, for a model whose weights are all loaded next:
    drawing CLIP-L's 123M random values took 3.1 s here, zeros 0.02 s."""

    def __init__(self, vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                 random_init=True):
        super().__init__()
        prefer_avx2_onednn()
        init = None if random_init else "zeros"
        self.embeddings = CLIPEmbeddings(vocab_size, hidden_size, max_position_embeddings, init)
        self.encoder = _Layers([CLIPEncoderLayer(hidden_size, num_attention_heads, intermediate_size, hidden_act,
                                                 layer_norm_eps, init) for _ in range(num_hidden_layers)])
        self.final_layer_norm = LayerNorm(hidden_size, layer_norm_eps)

    def construct(self, input_ids):
        return self.final_layer_norm(self.encoder(self.embeddings(input_ids)))


#################################################################################
#                        Folder layout, config and tokenizer                     #
#################################################################################

def _read_json(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (ValueError, RecursionError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read the file ({err.strerror or err})") from None


def _encoder_files(folder):
    """{role: path} of the files that define the encoder: config, weights, vocab, merges and the optional
    tokenizer_config / special_tokens_map. The SD pipeline layout when tokenizer/ or text_encoder/ exists,
    else one flat folder."""
    if not os.path.isdir(folder):
        raise CheckpointError(f"{folder}: no such text-encoder folder (expected tokenizer/ and text_encoder/ "
                              f"as in a Stable Diffusion pipeline folder, or one folder holding all their files)")
    sd_layout = any(os.path.isdir(os.path.join(folder, sub)) for sub in ("tokenizer", "text_encoder"))
    model_dir = os.path.join(folder, "text_encoder") if sd_layout else folder
    tokenizer_dir = os.path.join(folder, "tokenizer") if sd_layout else folder
    layout = "the Stable Diffusion layout" if sd_layout else "a flat CLIP folder"

    def required(directory, name):
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            raise CheckpointError(f"{folder}: the text-encoder folder has no {os.path.relpath(path, folder)} "
                                  f"(read as {layout})")
        return path

    files = {"config": required(model_dir, "config.json")}
    weights = [os.path.join(model_dir, name) for name in WEIGHT_FILES if os.path.isfile(os.path.join(model_dir, name))]
    if not weights:
        names = " or ".join(os.path.relpath(os.path.join(model_dir, n), folder) for n in WEIGHT_FILES)
        raise CheckpointError(f"{folder}: the text-encoder folder has no {names} (read as {layout})")
    files["weights"] = weights[0]
    files["vocab"], files["merges"] = (required(tokenizer_dir, name) for name in TOKENIZER_FILES)
    for name in TOKENIZER_CONFIG_FILES:
        if os.path.isfile(os.path.join(tokenizer_dir, name)):
            files[name.split(".")[0]] = os.path.join(tokenizer_dir, name)
    return files


def text_settings_from_config(config, source="config"):
    """CLIPTextModel constructor settings of a CLIPTextConfig dict, or of a CLIPModel
    config's `text_config` (updated by its legacy `text_config_dict`, as transformers does). Absent keys
    take CLIPTextConfig's defaults; every architecture key is checked; values this tower does not
    implement are refused by name. Raises CheckpointError naming `source` and the key."""
    if not isinstance(config, dict):
        raise CheckpointError(f"{source}: a text-encoder config must be a JSON object, got {describe_value(config)}")
    for key, allowed in (("model_type", MODEL_TYPES), ("architectures", ARCHITECTURES)):
        values = config.get(key, [])
        for value in values if isinstance(values, list) else [values]:
            if value not in allowed:
                raise CheckpointError(f"{source}: {key} {describe_value(value)} is not a CLIP text encoder "
                                      f"(supported: {', '.join(allowed)})")
    if "text_config" in config or config.get("model_type") == "clip":
        text = config.get("text_config")
        if not isinstance(text, dict) or not isinstance(config.get("text_config_dict") or {}, dict):
            raise CheckpointError(f"{source}: a CLIPModel config needs text_config, a JSON object")
        config, source = {**text, **(config.get("text_config_dict") or {})}, f"{source}: text_config"
        if config.get("model_type", "clip_text_model") != "clip_text_model":
            raise CheckpointError(f"{source}: model_type {describe_value(config['model_type'])} is not a CLIP text model")
    settings = {key: config.get(key, default) for key, default in TEXT_CONFIG_DEFAULTS.items()}

    def refuse(key, expected):
        return CheckpointError(f"{source}: key {key!r} must be {expected}, got {describe_value(settings[key])}")

    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "max_position_embeddings"):
        if not is_integer(settings[key]) or settings[key] < 1:
            raise refuse(key, "a positive integer")
    if settings["hidden_size"] % settings["num_attention_heads"]:
        raise CheckpointError(f"{source}: hidden_size {settings['hidden_size']} is not divisible by "
                              f"num_attention_heads {settings['num_attention_heads']}")
    if settings["max_position_embeddings"] < MAX_LENGTH:
        raise refuse("max_position_embeddings", f"at least {MAX_LENGTH} (prompts are {MAX_LENGTH} tokens)")
    if settings["hidden_act"] not in ACTIVATIONS:
        raise CheckpointError(f"{source}: hidden_act {describe_value(settings['hidden_act'])} is not supported "
                              f"(supported: {', '.join(ACTIVATIONS)})")
    eps = settings["layer_norm_eps"]
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise refuse("layer_norm_eps", "a positive finite number")
    unsupported = [key for key, allowed in CLIP_ONLY_VALUES.items() if key in config and config[key] not in allowed]
    if config.get("num_key_value_heads") not in (None, settings["num_attention_heads"]):
        unsupported.append("num_key_value_heads")  # grouped-query attention
    if unsupported:
        raise CheckpointError(f"{source}: {unsupported[0]} {describe_value(config[unsupported[0]])} is not implemented "
                              f"by the CLIP text encoder")
    return settings


def _token(value, path, key):
    """A special token of a tokenizer config (a string or an AddedToken object) as an AddedToken."""
    if isinstance(value, str):
        return AddedToken(value, special=True, normalized=False)
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        flags = {name: bool(value[name]) for name in ("lstrip", "rstrip", "single_word", "normalized") if name in value}
        return AddedToken(value["content"], special=True, **{"normalized": False, **flags})
    raise CheckpointError(f"{path}: {key} must be a token string or an AddedToken object, got {describe_value(value)}")


def _special_tokens(files):
    """([(file, key, AddedToken, listed id or None)] to add, in transformers 5.x's order; {key: AddedToken}
    of the named ones).

    As transformers resolves them: the named tokens (bos, eos, unk, pad) of tokenizer_config.json,
    overridden by special_tokens_map.json unless the config lists added_tokens_decoder, CLIPTokenizer's
    defaults for those left out; the tokens of added_tokens_decoder come first."""
    config_path = files.get("tokenizer_config", "tokenizer_config.json")
    config = _read_json(config_path) if "tokenizer_config" in files else {}
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: must be a JSON object, got {describe_value(config)}")
    sources = {key: (config[key], config_path) for key in _SPECIAL_TOKENS if config.get(key) is not None}
    decoder = config.get("added_tokens_decoder")
    if decoder is None and "special_tokens_map" in files:
        overrides = _read_json(files["special_tokens_map"])
        if not isinstance(overrides, dict):
            raise CheckpointError(f"{files['special_tokens_map']}: must be a JSON object, got {describe_value(overrides)}")
        sources.update({key: (overrides[key], files["special_tokens_map"]) for key in _SPECIAL_TOKENS
                        if overrides.get(key) is not None})
    named = [(sources[key][1], key, _token(*sources[key], key), None) if key in sources else
             (files["vocab"], key, AddedToken(default, special=True, normalized=False), None)
             for key, default in _SPECIAL_TOKENS.items()]
    if decoder is not None and not isinstance(decoder, dict):
        raise CheckpointError(f"{config_path}: added_tokens_decoder must be a JSON object")
    listed = [(config_path, f"added_tokens_decoder[{index}]",
               _token(value, config_path, f"added_tokens_decoder[{index}]"), index)
              for index, value in (decoder or {}).items()]
    return listed + named, {key: token for _, key, token, _ in named}


def clip_normalizer():
    return normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])


def clip_pre_tokenizer():
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_CLIP_WORDS), behavior="removed", invert=True),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False)])


def build_clip_tokenizer(files):
    """(tokenizers.Tokenizer padding and truncating to 77 tokens, vocabulary size) from the folder's
    tokenizer files: transformers 5.x CLIPTokenizer's pipeline. Every special token must be in vocab.json
    (at its listed id, for added_tokens_decoder)."""
    vocab = _read_json(files["vocab"])
    if not isinstance(vocab, dict) or not vocab or not all(is_integer(i) and i >= 0 for i in vocab.values()):
        raise CheckpointError(f"{files['vocab']}: not a BPE vocabulary (a JSON object of token: non-negative id)")
    try:
        _, merges = BPE.read_file(files["vocab"], files["merges"])
    except Exception as err:  # the Rust library raises its own exception type for a malformed file
        raise CheckpointError(f"{files['merges']}: not a BPE merges file ({err})") from None
    _check_merges(files, vocab, merges)
    special, named = _special_tokens(files)
    for source, key, token, index in special:
        if token.content not in vocab:
            raise CheckpointError(f"{source}: {key} {token.content!r} is not in {files['vocab']}")
        if index is not None and str(vocab[token.content]) != str(index):
            raise CheckpointError(f"{source}: {key} {token.content!r} has id {vocab[token.content]} in "
                                  f"{files['vocab']}")
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                              end_of_word_suffix="</w>", fuse_unk=False, unk_token=named["unk_token"].content))
    tokenizer.normalizer, tokenizer.pre_tokenizer = clip_normalizer(), clip_pre_tokenizer()
    tokenizer.add_tokens([token for _, _, token, _ in special])
    bos, eos, pad = (named[key].content for key in ("bos_token", "eos_token", "pad_token"))
    tokenizer.post_processor = processors.RobertaProcessing((eos, vocab[eos]), (bos, vocab[bos]),
                                                            trim_offsets=False, add_prefix_space=False)
    tokenizer.enable_truncation(MAX_LENGTH)
    tokenizer.enable_padding(length=MAX_LENGTH, pad_id=vocab[pad], pad_token=pad)
    return tokenizer, max(vocab.values()) + 1


def _check_merges(files, vocab, merges):
    """Every merge's two parts and its result must be tokens of vocab.json: the Rust BPE refuses one that
    is not with an error naming neither file (`Token ... out of vocabulary`)."""
    with open(files["merges"], encoding="utf-8") as handle:
        header = int(handle.readline().startswith("#version"))  # the one line read_file skips
    for number, (left, right) in enumerate(merges, start=1 + header):
        for token, what in ((left, "its first part"), (right, "its second part"), (left + right, "its result")):
            if token not in vocab:
                raise CheckpointError(f"{files['merges']}: line {number}, the merge {bounded(left)} "
                                      f"{bounded(right)}: {what} {bounded(token)} is not in {files['vocab']}")


def text_encoder_sha256(files):
    """One hex digest over the files that define the encoder (by role, so a layout change of the same
    files keeps it): what a cache fingerprint and a run's state.json record."""
    digest = hashlib.sha256()
    for role in sorted(files):
        digest.update(role.encode())
        try:
            digest.update(sha256_of(files[role]).encode())
        except OSError as err:
            raise CheckpointError(f"{files[role]}: cannot read the file ({err.strerror or err})") from None
    return digest.hexdigest()


def clip_text_state(state):
    """A CLIPTextModel / CLIPModel state dict -> the text tower's weights under this model's names
    (the text_model. prefix of older files dropped; vision tower, projections and position_ids left out)."""
    renamed = {}
    for name, value in state.items():
        name = name[len("text_model."):] if name.startswith("text_model.") else name
        if name.startswith(_UNUSED_WEIGHTS) or name == "embeddings.position_ids":
            continue
        renamed[name] = value
    return renamed


#################################################################################
#                                  TextEncoder                                   #
#################################################################################

def _is_utf8(text):
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


class TextEncoder:
    """Prompts -> CLIP ids (N, 77) -> last_hidden_state (N, 77, D) float32, in micro-batches.

    `width` is D, `max_length` 77, `folder` the folder it was read from and `sha256` the digest of its
    files (None for an encoder built in memory). encode() runs the compiled network in the current
    MindSpore mode (GRAPH_MODE in every `latte` command); a batch runs padded to the next power of two
    up to `micro_batch`, so at most log2(micro_batch) + 1 graphs are compiled, whatever the prompt counts.
    """

    max_length = MAX_LENGTH

    def __init__(self, model, tokenizer, *, micro_batch=16, folder=None, sha256=None):
        if not is_integer(micro_batch) or micro_batch < 1:
            raise ValueError(f"micro_batch must be a positive integer, got {micro_batch!r}")
        self.model = model
        self.model.set_train(False)
        self.tokenizer = tokenizer
        self.micro_batch = micro_batch
        self.folder = folder
        self.sha256 = sha256
        self.width = model.final_layer_norm.weight.shape[0]

    @property
    def identity(self):
        """The TextEncoderIdentity of an encoder read from a folder: what caches and runs record of it."""
        return TextEncoderIdentity.of(self)

    @classmethod
    def from_pretrained(cls, folder, *, micro_batch=16):
        """Read an SD-pipeline-style folder (tokenizer/ + text_encoder/) or a flat CLIP folder. Every fault
        (a missing file, bad JSON, an architecture value not implemented, a vocabulary of another size than
        the encoder's, weights that do not fit) is a CheckpointError (a UserError) naming the file."""
        folder = os.path.abspath(os.fspath(folder))
        files = _encoder_files(folder)
        settings = text_settings_from_config(_read_json(files["config"]), files["config"])
        tokenizer, vocab_size = build_clip_tokenizer(files)
        if vocab_size != settings["vocab_size"]:
            past = (f" (token {bounded(tokenizer.id_to_token(vocab_size - 1))} has id {vocab_size - 1}, past the "
                    f"encoder's embeddings)" if vocab_size > settings["vocab_size"] else "")
            raise CheckpointError(f"{files['vocab']}: the tokenizer's vocabulary has {vocab_size} tokens, the "
                                  f"encoder ({files['config']}) has vocab_size {settings['vocab_size']}{past}")
        model = CLIPTextModel(**settings, random_init=False)  # every parameter is set from the file
        load_weights(model, files["weights"], transform=clip_text_state)
        return cls(model, tokenizer, micro_batch=micro_batch, folder=folder, sha256=text_encoder_sha256(files))

    def tokenize(self, prompts):
        """A prompt or a list of prompts -> int64 ids (N, 77), as transformers' CLIPTokenizer(prompts,
        padding="max_length", truncation=True, max_length=77). Prompts longer than 77 tokens keep their
        first 75 between the start and end tokens; one warning says how many were cut."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        for index, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise TypeError(f"prompt {index} is a {type(prompt).__name__}, not a str")
        bad = next((i for i, prompt in enumerate(prompts) if not _is_utf8(prompt)), None)
        if bad is not None:  # a lone surrogate: no UTF-8 text holds one, and the Rust library refuses it
            raise UserError(f"prompt {bad} ({prompts[bad]!r:.60}) is not valid Unicode text")
        # one at a time, not encode_batch: its thread pool would make a later fork (a worker process) warn
        # and switch it off
        encodings = [self.tokenizer.encode(prompt) for prompt in prompts]
        cut = sum(bool(encoding.overflowing) for encoding in encodings)
        if cut:
            warnings.warn(f"{cut} of {len(prompts)} prompts are longer than {MAX_LENGTH} tokens and were truncated "
                          f"to {MAX_LENGTH}", stacklevel=2)
        return np.array([encoding.ids for encoding in encodings], dtype=np.int64).reshape(len(prompts), MAX_LENGTH)

    def encode(self, prompts):
        """A prompt or a list of prompts -> last_hidden_state float32 (N, 77, D)."""
        return self.encode_ids(self.tokenize(prompts))

    def encode_ids(self, input_ids):
        """int ids (N, 77) -> last_hidden_state float32 (N, 77, D), `micro_batch` rows at a time."""
        input_ids = np.asarray(input_ids)
        if input_ids.ndim != 2 or input_ids.shape[1] != MAX_LENGTH:
            raise ValueError(f"input_ids must have shape (N, {MAX_LENGTH}), got {input_ids.shape}")
        out = np.empty((len(input_ids), MAX_LENGTH, self.width), np.float32)
        for start in range(0, len(input_ids), self.micro_batch):
            batch = input_ids[start:start + self.micro_batch].astype(np.int32)
            rows = min(self.micro_batch, 1 << (len(batch) - 1).bit_length())  # the next power of two
            padded = np.concatenate([batch, np.repeat(batch[-1:], rows - len(batch), axis=0)])
            out[start:start + len(batch)] = self.model(Tensor(padded)).asnumpy()[:len(batch)]
        return out


def load_text_encoder(folder, recorded=None, *, recorded_by="", advice="", force=None):
    """The one way a stage loads a text encoder (the cache job and its workers, training from videos,
    sampling): the TextEncoder of `folder`, loaded whole (tokenizer files, config, every weight), and,
    given the TextEncoderIdentity `recorded_by` recorded, checked to be that encoder: the same sha256 of
    its files (the folder may have moved). Any fault is one TextEncoderError naming the file, or both
    encoders (+ `advice`). `force`: the key that allows another encoder; then the difference is a
    warning (`force` set to "" keeps it quiet: another rank already warned) and the encoder is used."""
    try:
        encoder = TextEncoder.from_pretrained(folder)
    except CheckpointError as err:
        raise TextEncoderError(f"text_encoder: {err}") from None
    if recorded is not None and encoder.sha256 != recorded.sha256:
        message = (f"text_encoder {encoder.folder} (sha256 {encoder.sha256}) is not the encoder {recorded_by} "
                   f"({recorded.path}, sha256 {recorded.sha256})")
        if force is None:
            raise TextEncoderError(message + advice)
        if force:
            logger.warning("%s: using it anyway (%s)", message, force)
    return encoder
