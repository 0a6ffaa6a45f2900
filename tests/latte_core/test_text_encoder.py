"""latte_core.TextEncoder: the CLIP text tower and tokenizer against transformers' outputs (the fixture),
both folder layouts, pad-token variants, random-weight folders, and every bad folder or prompt."""
import collections
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import unicodedata
import warnings
import zipfile

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from latte_core import TextEncoder
from latte_core.checkpoint import CheckpointError
from latte_core.errors import UserError
from latte_toolkit.pipelines.ingest import run_ingest
from latte_toolkit.tools.demo_text_encoder import write_random_text_encoder

from conftest import relative_error
from media import moving_square_frames, one_error_line, snapshot, write_mp4

LATTE = os.path.join(os.path.dirname(sys.executable), "latte")

# float32 parity with transformers' float32 CPU forward: the fixture README's bound for every reference
PARITY = 1e-4


@pytest.fixture(scope="module")
def text_fixture(fixtures_dir):
    folder = fixtures_dir / "text"
    return {"folder": folder / "clip_text_small", "prompts": json.loads((folder / "clip_prompts.json").read_text()),
            "io": dict(np.load(folder / "clip_text_small_io.npz"))}


@pytest.fixture(scope="module")
def encoder(text_fixture):
    return TextEncoder.from_pretrained(text_fixture["folder"])


@pytest.fixture(scope="module")
def vocab(text_fixture):
    return json.loads((text_fixture["folder"] / "tokenizer" / "vocab.json").read_text())


def _copy(text_fixture, tmp_path, name="encoder"):
    return shutil.copytree(text_fixture["folder"], tmp_path / name)


def _edit_json(path, **changes):
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(changes)
    path.write_text(json.dumps(data))


# ------------------------------------------------------------------ a torch.save zip, written without torch
class FloatStorage:
    """Pickled by reference as this module's FloatStorage, renamed torch.FloatStorage in the bytes."""


def _rebuild_tensor_v2(*args):
    """Pickled by reference, renamed torch._utils._rebuild_tensor_v2 in the bytes."""


def _torch_save(state, path):
    """Write {name: float32 array} as torch.save's zip (archive/data.pkl + one record per storage)."""
    storages = []

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, tuple) and obj[:1] == ("storage-ref",):
                return ("storage", FloatStorage, str(obj[1]), "cpu", obj[2])
            return None

        def reducer_override(self, obj):
            if not isinstance(obj, np.ndarray):
                return NotImplemented
            storages.append(np.array(obj, "<f4", order="C"))  # (ascontiguousarray would make a 0-d tensor 1-d)
            stride = tuple(s // 4 for s in storages[-1].strides)
            ref = ("storage-ref", len(storages) - 1, obj.size)
            return _rebuild_tensor_v2, (ref, 0, obj.shape, stride, False, collections.OrderedDict())

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump(collections.OrderedDict(state))
    module = __name__.encode()
    payload = buffer.getvalue().replace(b"c" + module + b"\nFloatStorage\n", b"ctorch\nFloatStorage\n")
    payload = payload.replace(b"c" + module + b"\n_rebuild_tensor_v2\n", b"ctorch._utils\n_rebuild_tensor_v2\n")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/byteorder", "little")
        for key, values in enumerate(storages):
            archive.writestr(f"archive/data/{key}", values.tobytes())


# ------------------------------------------------------------------ parity with transformers
def test_fixture_folder_matches_transformers(text_fixture, kernel_path):
    encoder = TextEncoder.from_pretrained(text_fixture["folder"])
    reference = text_fixture["io"]
    ids = encoder.tokenize(text_fixture["prompts"])
    assert ids.dtype == np.int64 and ids.shape == (4, 77)
    np.testing.assert_array_equal(ids, reference["input_ids"])
    hidden = encoder.encode(text_fixture["prompts"])
    assert hidden.dtype == np.float32 and hidden.shape == (4, 77, 32)
    assert relative_error(hidden, reference["last_hidden_state"]) < PARITY
    assert encoder.width == 32 and encoder.max_length == 77
    assert encoder.folder == str(text_fixture["folder"]) and len(encoder.sha256) == 64


def test_micro_batches_give_the_whole_batch_result(text_fixture, encoder):
    prompts = text_fixture["prompts"] + ["a sky at dusk", "rain", "snow falling slowly"]
    whole = encoder.encode(prompts)
    pieces = TextEncoder.from_pretrained(text_fixture["folder"], micro_batch=2).encode(prompts)
    # rows run in batches of other sizes (padded to powers of two): equal up to float32 rounding
    assert relative_error(pieces, whole) < 1e-6
    assert relative_error(encoder.encode(prompts[5]), whole[5:6]) < 1e-6
    assert encoder.encode([]).shape == (0, 77, 32)


def test_one_prompt_or_a_list(encoder, text_fixture):
    np.testing.assert_array_equal(encoder.tokenize(text_fixture["prompts"][0]), text_fixture["io"]["input_ids"][:1])


# ------------------------------------------------------------------ tokenizer rules (transformers 5.x's pipeline)
def test_unicode_normalisation_whitespace_and_case(encoder, vocab):
    same = [("Café CRÈME", "cafe\u0301 crème"),  # NFC, then lower case
            ("clouds drifting left", "  clouds\u00a0drifting\u2003\tleft\n "),  # any run of Unicode whitespace
            ("a b", "a\u3000\u2028b")]
    for left, right in same:
        np.testing.assert_array_equal(encoder.tokenize(left), encoder.tokenize(right))
    ids = encoder.tokenize("日本 😀")[0]
    assert ids[0] == vocab["<|startoftext|>"] and ids[-1] == vocab["<|endoftext|>"]
    assert len(set(ids[1:]) - {vocab["<|endoftext|>"]}) >= 2  # byte-level BPE: nothing is unknown
    assert unicodedata.normalize("NFC", "cafe\u0301") == "café"


def test_special_token_text_is_the_special_token(encoder, vocab):
    ids = encoder.tokenize("a<|endoftext|>b")[0]
    assert list(ids[:5]) == [vocab["<|startoftext|>"], vocab["a</w>"], vocab["<|endoftext|>"], vocab["b</w>"],
                             vocab["<|endoftext|>"]]


def test_an_over_long_prompt_is_truncated_with_one_warning(encoder, vocab):
    prompts = ["a " * 100, "clouds", "b " * 76, "c " * 75]  # 102, 3, 78 and 77 tokens with start and end
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids = encoder.tokenize(prompts)
    assert len(caught) == 1 and "2 of 4 prompts are longer than 77 tokens" in str(caught[0].message)
    assert list(ids[0]) == [vocab["<|startoftext|>"]] + [vocab["a</w>"]] * 75 + [vocab["<|endoftext|>"]]
    assert list(ids[3]) == [vocab["<|startoftext|>"]] + [vocab["c</w>"]] * 75 + [vocab["<|endoftext|>"]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoder.tokenize(prompts[1:2] + prompts[3:])  # nothing cut, no warning


def test_a_prompt_that_is_not_unicode_text_is_refused(encoder):
    with pytest.raises(UserError, match="prompt 1 .* is not valid Unicode text"):
        encoder.tokenize(["fine", "bad \ud800"])
    with pytest.raises(TypeError, match="prompt 0 is a int"):
        encoder.tokenize([3])


@pytest.mark.parametrize("layout", ["pad in tokenizer_config", "pad in special_tokens_map (SD 2.x)",
                                    "added_tokens_decoder lists it"])
def test_a_folder_that_pads_with_an_exclamation_mark(text_fixture, encoder, vocab, tmp_path, layout):
    folder = _copy(text_fixture, tmp_path)
    tokenizer = folder / "tokenizer"
    if layout == "pad in tokenizer_config":  # and no special_tokens_map.json, which would override it
        _edit_json(tokenizer / "tokenizer_config.json", pad_token="!")
        (tokenizer / "special_tokens_map.json").unlink()
    elif layout == "pad in special_tokens_map (SD 2.x)":
        _edit_json(tokenizer / "special_tokens_map.json", pad_token="!")
    else:
        _edit_json(tokenizer / "tokenizer_config.json", pad_token="!", added_tokens_decoder={
            "0": {"content": "!", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                  "special": True}})
    padded = TextEncoder.from_pretrained(folder)
    start, end, bang = vocab["<|startoftext|>"], vocab["<|endoftext|>"], vocab["!"]
    ids = padded.tokenize(["clouds", "ok!!"])
    assert list(ids[0]) == [start, vocab["clouds</w>"], end] + [bang] * 74
    # "!" is a special token there: each one is split off, as transformers does, not BPE's "!!</w>"
    assert list(ids[1][:6]) == [start, vocab["ok</w>"], bang, bang, end, bang]
    # with a causal mask the positions up to the end token do not see the padding
    prompts = ["clouds drifting left", "a red car"]
    ours, reference = padded.encode(prompts), encoder.encode(prompts)
    for row, prompt in enumerate(prompts):
        length = int(np.argmax(encoder.tokenize(prompt)[0] == end)) + 1
        assert relative_error(ours[row, :length], reference[row, :length]) < 1e-6
        assert relative_error(ours[row, length:], reference[row, length:]) > 1e-3
    assert padded.sha256 != encoder.sha256


def test_special_tokens_map_is_ignored_when_the_config_lists_added_tokens_decoder(text_fixture, vocab, tmp_path):
    folder = _copy(text_fixture, tmp_path)
    _edit_json(folder / "tokenizer" / "tokenizer_config.json", added_tokens_decoder={
        str(vocab[t]): {"content": t, "special": True} for t in ("<|startoftext|>", "<|endoftext|>")})
    _edit_json(folder / "tokenizer" / "special_tokens_map.json", pad_token="!")
    np.testing.assert_array_equal(TextEncoder.from_pretrained(folder).tokenize(text_fixture["prompts"]),
                                  text_fixture["io"]["input_ids"])


# ------------------------------------------------------------------ the flat CLIPModel layout (clip-vit-large-patch14)
@pytest.mark.parametrize("weights_file", ["pytorch_model.bin", "model.safetensors"])
def test_a_flat_clipmodel_folder(text_fixture, tmp_path, weights_file):
    source = text_fixture["folder"]
    flat = tmp_path / "clip-vit"
    flat.mkdir()
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(source / "tokenizer" / name, flat / name)
    text_config = json.loads((source / "text_encoder" / "config.json").read_text())
    # legacy ids in the model config (openai's says bos 0, eos 2, pad 1): the tokenizer's files decide
    text_config.update(bos_token_id=0, eos_token_id=2, pad_token_id=1)
    (flat / "config.json").write_text(json.dumps({
        "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 32, "logit_scale_init_value": 2.6592,
        "text_config": text_config, "text_config_dict": {"hidden_size": 32, "num_hidden_layers": 2},
        "vision_config": {"hidden_size": 48, "patch_size": 14, "model_type": "clip_vision_model"}}))
    weights = {f"text_model.{name}": value
               for name, value in load_file(str(source / "text_encoder" / "model.safetensors")).items()}
    weights.update({"vision_model.embeddings.patch_embedding.weight": np.ones((48, 3, 14, 14), np.float32),
                    "visual_projection.weight": np.ones((32, 48), np.float32),
                    "text_projection.weight": np.ones((32, 32), np.float32),
                    "text_model.embeddings.position_ids": np.arange(77, dtype=np.float32)[None],
                    "logit_scale": np.array(2.6592, np.float32)})  # CLIPModel's 0-d tensor
    if weights_file == "model.safetensors":
        save_file(weights, str(flat / weights_file))
    else:
        _torch_save(weights, flat / weights_file)
    encoder = TextEncoder.from_pretrained(flat)
    np.testing.assert_array_equal(encoder.tokenize(text_fixture["prompts"]), text_fixture["io"]["input_ids"])
    assert relative_error(encoder.encode(text_fixture["prompts"]), text_fixture["io"]["last_hidden_state"]) < PARITY


# ------------------------------------------------------------------ bad folders: one error naming the file
@pytest.mark.parametrize("missing", ["text_encoder/config.json", "text_encoder/model.safetensors",
                                     "tokenizer/vocab.json", "tokenizer/merges.txt"])
def test_a_missing_file_is_named(text_fixture, tmp_path, missing):
    folder = _copy(text_fixture, tmp_path)
    (folder / missing).unlink()
    with pytest.raises(CheckpointError, match=f"{folder}: the text-encoder folder has no {missing}"):
        TextEncoder.from_pretrained(folder)


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(UserError, match=f"{tmp_path / 'nowhere'}: no such text-encoder folder"):
        TextEncoder.from_pretrained(tmp_path / "nowhere")


@pytest.mark.parametrize("changes, words", [
    ({"hidden_act": "relu"}, "hidden_act \"relu\" (str) is not supported (supported: quick_gelu, gelu)"),
    ({"position_embedding_type": "rotary"}, "position_embedding_type \"rotary\" (str) is not implemented"),
    ({"num_key_value_heads": 2}, "num_key_value_heads 2 (int) is not implemented"),
    ({"model_type": "t5"}, "model_type \"t5\" (str) is not a CLIP text encoder"),
    ({"num_attention_heads": 5}, "hidden_size 32 is not divisible by num_attention_heads 5"),
    ({"max_position_embeddings": 64}, "key 'max_position_embeddings' must be at least 77"),
    ({"layer_norm_eps": "1e-5"}, "key 'layer_norm_eps' must be a positive finite number"),
    ({"vocab_size": 49000}, "has vocab_size 49000"),
])
def test_config_values_that_are_not_implemented_are_refused_by_name(text_fixture, tmp_path, changes, words):
    folder = _copy(text_fixture, tmp_path)
    _edit_json(folder / "text_encoder" / "config.json", **changes)
    with pytest.raises(CheckpointError) as err:
        TextEncoder.from_pretrained(folder)
    assert str(folder / "text_encoder" / "config.json") in str(err.value) and words in str(err.value), str(err.value)


def test_unknown_keys_that_change_nothing_are_ignored(text_fixture, tmp_path):
    folder = _copy(text_fixture, tmp_path)
    _edit_json(folder / "text_encoder" / "config.json", attention_dropout=0.1, some_future_key={"a": 1},
               _attn_implementation="sdpa")
    encoder = TextEncoder.from_pretrained(folder)
    assert relative_error(encoder.encode(text_fixture["prompts"]), text_fixture["io"]["last_hidden_state"]) < PARITY


def test_a_vocabulary_that_does_not_fit_the_weights_is_refused(text_fixture, tmp_path):
    folder = _copy(text_fixture, tmp_path)
    vocab_path = folder / "tokenizer" / "vocab.json"
    vocab = json.loads(vocab_path.read_text())
    vocab["an extra token"] = len(vocab)
    vocab_path.write_text(json.dumps(vocab))
    with pytest.raises(CheckpointError, match=r"vocab\.json: the tokenizer's vocabulary has 49409 tokens, the encoder "
                                              r".* has vocab_size 49408 \(token 'an extra token' has id 49408, past "
                                              r"the encoder's embeddings\)"):
        TextEncoder.from_pretrained(folder)


def _unmade_pair(vocab):
    """Two tokens of the vocabulary whose concatenation is not one."""
    return next((a, b) for a in ("q", "x", "z") for b in ("zx</w>", "qq</w>", "xz</w>") if a in vocab and b in vocab
                and a + b not in vocab)


def _cache_with(folder, fixtures_dir, tmp_path):
    """`latte cache --text-encoder folder` on a one-clip manifest (the encoder is loaded before --out is made)."""
    write_mp4(tmp_path / "src" / "clip.mp4", moving_square_frames(4))
    run_ingest([tmp_path / "src"], tmp_path / "ingest", workers=0, progress=False)
    return subprocess.run([LATTE, "cache", "--manifest", str(tmp_path / "ingest"), "--vae",
                           str(fixtures_dir / "vae" / "vae_small_diffusers"), "--out", str(tmp_path / "cache"),
                           "--text-encoder", str(folder)], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case", ["result", "first part", "second part", "id past vocab_size"])
def test_tokenizer_files_that_disagree_are_one_error_naming_the_file(text_fixture, fixtures_dir, tmp_path, case):
    """Through `latte cache --text-encoder`: a merge of merges.txt that vocab.json cannot make, or a token
    of vocab.json past the encoder's vocab_size, is one Error line naming the file, the line or token,
    exit 2, before --out is made (the Rust BPE's own words, `Token ... out of vocabulary`, name no file)."""
    folder = _copy(text_fixture, tmp_path)
    vocab_path, merges = folder / "tokenizer" / "vocab.json", folder / "tokenizer" / "merges.txt"
    vocab = json.loads(vocab_path.read_text())
    if case == "id past vocab_size":
        vocab["an extra token"] = len(vocab)
        vocab_path.write_text(json.dumps(vocab))
        names = [vocab_path, "'an extra token' has id 49408, past the encoder's embeddings"]
    else:
        left, right = _unmade_pair(vocab)
        merge, missing = {"result": ((left, right), left + right), "first part": (("qzqz", right), "qzqz"),
                          "second part": ((left, "zqzq</w>"), "zqzq</w>")}[case]
        lines = merges.read_text().splitlines()
        number = len(lines) // 2
        lines.insert(number - 1, " ".join(merge))  # the merge's own line: `number`
        merges.write_text("\n".join(lines) + "\n")
        names = [merges, f"line {number}, the merge {merge[0]!r} {merge[1]!r}: its {case} {missing!r} is not in "
                         f"{vocab_path}"]
    before = snapshot(folder)
    line = one_error_line(_cache_with(folder, fixtures_dir, tmp_path), 2, *names)
    assert "out of vocabulary" not in line and not (tmp_path / "cache").exists() and snapshot(folder) == before


def test_a_pad_token_outside_the_vocabulary_is_refused(text_fixture, tmp_path):
    folder = _copy(text_fixture, tmp_path)
    _edit_json(folder / "tokenizer" / "special_tokens_map.json", pad_token="<pad>")
    with pytest.raises(CheckpointError, match=r"special_tokens_map\.json: pad_token '<pad>' is not in .*vocab\.json"):
        TextEncoder.from_pretrained(folder)


def test_weights_of_another_shape_are_refused_naming_the_tensor(text_fixture, tmp_path):
    folder = _copy(text_fixture, tmp_path)
    _edit_json(folder / "text_encoder" / "config.json", intermediate_size=48)
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not fit the model: .*"
                                              r"encoder\.layers\.0\.mlp\.fc1\.weight \(64, 32\) != model \(48, 32\)"):
        TextEncoder.from_pretrained(folder)


# ------------------------------------------------------------------ writing folders with random weights
def test_write_random_text_encoder_makes_a_loadable_sd_folder(text_fixture, tmp_path):
    tokenizer = text_fixture["folder"] / "tokenizer"
    vocab, merges = tokenizer / "vocab.json", tokenizer / "merges.txt"
    folder = write_random_text_encoder(tmp_path / "random", vocab, merges, hidden_size=24, num_hidden_layers=1,
                                       num_attention_heads=3, hidden_act="gelu", seed=5)
    encoder = TextEncoder.from_pretrained(folder)
    np.testing.assert_array_equal(encoder.tokenize(text_fixture["prompts"]), text_fixture["io"]["input_ids"])
    hidden = encoder.encode(text_fixture["prompts"])
    assert hidden.shape == (4, 77, 24) and np.isfinite(hidden).all()
    config = json.loads((tmp_path / "random" / "text_encoder" / "config.json").read_text())
    assert config["random_weights"] is True and config["intermediate_size"] == 96 and config["hidden_act"] == "gelu"
    again = write_random_text_encoder(tmp_path / "again", vocab, merges, hidden_size=24, num_hidden_layers=1,
                                      num_attention_heads=3, hidden_act="gelu", seed=5)
    other = write_random_text_encoder(tmp_path / "other", vocab, merges, hidden_size=24, num_hidden_layers=1,
                                      num_attention_heads=3, hidden_act="gelu", seed=6)
    assert TextEncoder.from_pretrained(again).sha256 == encoder.sha256 != TextEncoder.from_pretrained(other).sha256
    with pytest.raises(CheckpointError, match="exists and is not empty"):
        write_random_text_encoder(folder, vocab, merges, hidden_size=24, num_hidden_layers=1, num_attention_heads=3)


def test_a_small_vocabulary_of_its_own_with_an_exclamation_pad(tmp_path):
    letters = "abcdefghijklmnopqrstuvwxyz"
    tokens = ["!"] + list(letters) + [c + "</w>" for c in letters] + ["cl", "clo", "clou", "cloud", "clouds</w>"]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    merges = ["c l", "cl o", "clo u", "clou d", "cloud s</w>"]
    folder = write_random_text_encoder(tmp_path / "tiny", vocab, merges, hidden_size=16, num_hidden_layers=1,
                                       num_attention_heads=2, pad_token="!")
    encoder = TextEncoder.from_pretrained(folder)
    ids = encoder.tokenize("Clouds go")[0]
    assert list(ids[:6]) == [vocab["<|startoftext|>"], vocab["clouds</w>"], vocab["g"], vocab["o</w>"],
                             vocab["<|endoftext|>"], vocab["!"]]
    assert encoder.encode(["clouds"]).shape == (1, 77, 16)
    with pytest.raises(CheckpointError, match="the vocabulary has no '<pad>'"):
        write_random_text_encoder(tmp_path / "bad", vocab, merges, hidden_size=16, num_hidden_layers=1,
                                  num_attention_heads=2, pad_token="<pad>")
    assert not (tmp_path / "bad").exists()


def test_the_fingerprint_covers_every_defining_file(text_fixture, encoder, tmp_path):
    folder = _copy(text_fixture, tmp_path)
    assert TextEncoder.from_pretrained(folder).sha256 == encoder.sha256  # a copy is the same encoder
    _edit_json(folder / "tokenizer" / "tokenizer_config.json", model_max_length=77, note="edited")
    assert TextEncoder.from_pretrained(folder).sha256 != encoder.sha256


# ------------------------------------------------------------------ transformers itself as the oracle
def _tricky_prompts(count=300, seed=17):
    """Hand-picked hard cases, then seeded random strings over scripts, emoji, combining marks,
    compatibility forms and Unicode whitespace."""
    prompts = ["", "  \t\n ", "HELLO World!!!", "cafe\u0301 crème brûlée", "Straße İstanbul ΣΊΣΥΦΟΣ",
               "ﬁne ｆｕｌｌ ①²", "日本語 中文 한국어 русский עברית العربية हिन्दी ไทย", "😀🎉 👨\u200d👩\u200d👧 🇫🇷",
               "nbsp\u00a0em\u2003ideo\u3000", "line\u2028par\u2029nel\x85vt\x0bff\x0c", "zero\u200bwidth\ufeff",
               "ctrl\x00\x01\x7f", "it's I'M you'll it’s", "3.14 1e10 ... !!! ((x)) <|startoftext|>a<|endoftext|>",
               "wow! a!b !!", "x" * 300, "word " * 100, "a " * 74, "a " * 75, "a " * 76, "😀" * 80,
               "\u0301 lone combining", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ǅ Ⅻ"]
    blocks = [(0x20, 0x7e), (0xa0, 0x24f), (0x300, 0x36f), (0x370, 0x4ff), (0x590, 0x6ff), (0x900, 0x97f),
              (0x2000, 0x206f), (0x3040, 0x30ff), (0x4e00, 0x4fff), (0xac00, 0xacff), (0xfb00, 0xfb4f),
              (0xff00, 0xffef), (0x1d400, 0x1d4ff), (0x1f300, 0x1f64f)]
    spaces = [" ", "\t", "\n", "\u00a0", "\u2003", "\u3000", "\u2028", "\x85", "\u200b"]
    rng = np.random.default_rng(seed)
    for _ in range(count):
        chars = []
        for _ in range(rng.integers(0, 120)):
            low, high = blocks[rng.integers(len(blocks))]
            space = rng.random() < 0.15
            chars.append(spaces[rng.integers(len(spaces))] if space else chr(rng.integers(low, high + 1)))
        prompts.append("".join(chars))
    return prompts


@pytest.mark.parametrize("variant", ["fixture", "pad ! in the config", "pad ! in special_tokens_map",
                                     "AddedToken objects"])
def test_ids_equal_transformers_clip_tokenizer(text_fixture, tmp_path, variant):
    transformers = pytest.importorskip("transformers")  # test-only oracle: transformers 5.x, no torch needed
    folder = _copy(text_fixture, tmp_path)
    tokenizer = folder / "tokenizer"
    added = {"__type": "AddedToken", "lstrip": False, "rstrip": False, "normalized": True, "single_word": False}
    if variant == "pad ! in the config":
        _edit_json(tokenizer / "tokenizer_config.json", pad_token="!")
        (tokenizer / "special_tokens_map.json").unlink()
    elif variant == "pad ! in special_tokens_map":
        _edit_json(tokenizer / "special_tokens_map.json", pad_token="!")
    elif variant == "AddedToken objects":
        _edit_json(tokenizer / "tokenizer_config.json", bos_token={**added, "content": "<|startoftext|>"},
                   eos_token={**added, "content": "<|endoftext|>"})
    prompts = _tricky_prompts()
    reference = transformers.CLIPTokenizer.from_pretrained(str(tokenizer))(
        prompts, padding="max_length", truncation=True, max_length=77)["input_ids"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = TextEncoder.from_pretrained(folder).tokenize(prompts)
    mismatched = [prompts[i] for i in np.flatnonzero((ours != np.array(reference)).any(axis=1))]
    assert not mismatched, f"{len(mismatched)} prompts differ, e.g. {mismatched[:3]!r}"
