"""One text-encoder identity: the record every stage keeps of an encoder, its JSON forms, and the one
load-and-check function with its one error kind."""
import json
import shutil

import pytest

from latte_core.text_encoder import load_text_encoder
from latte_core.text_identity import TextEncoderError, TextEncoderIdentity
from latte_toolkit.tools.demo_text_encoder import byte_level_vocabulary, write_random_text_encoder


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("identity")
    vocab = byte_level_vocabulary()
    return [write_random_text_encoder(root / f"enc{seed}", vocab, [], hidden_size=16, num_hidden_layers=1,
                                      num_attention_heads=2, seed=seed) for seed in (0, 1)]


def test_the_identity_is_frozen_and_reads_as_its_json_forms(encoders):
    encoder = load_text_encoder(encoders[0])
    identity = encoder.identity
    assert identity == TextEncoderIdentity(encoder.folder, encoder.sha256, 16, 77)
    assert identity == {"path": encoder.folder, "sha256": encoder.sha256, "width": 16, "max_length": 77}
    assert identity["width"] == identity.width == 16 and dict(identity)["max_length"] == 77
    assert json.dumps(identity.record()) == json.dumps({"path": encoder.folder, "sha256": encoder.sha256})
    with pytest.raises(AttributeError):
        identity.sha256 = "other"
    with pytest.raises(KeyError):
        identity["folder"]


def test_a_state_records_identity_is_read_and_checked():
    assert TextEncoderIdentity.from_record(None, "state.json") is None
    read = TextEncoderIdentity.from_record({"path": "enc", "sha256": "ab"}, "state.json")
    assert read.record() == {"path": "enc", "sha256": "ab"}
    with pytest.raises(TextEncoderError, match=r"state.json: text_encoder must be"):
        TextEncoderIdentity.from_record({"path": "enc"}, "state.json")


def test_one_load_and_check_refuses_a_broken_folder_and_another_encoder(encoders, tmp_path, caplog):
    broken = tmp_path / "broken"
    shutil.copytree(encoders[0], broken)
    (broken / "tokenizer" / "merges.txt").unlink()
    with pytest.raises(TextEncoderError, match="tokenizer/merges.txt"):
        load_text_encoder(broken)
    recorded = load_text_encoder(encoders[0]).identity
    assert load_text_encoder(encoders[0], recorded).identity == recorded
    with pytest.raises(TextEncoderError, match=rf"is not the encoder the run recorded \({recorded.path}, sha256 "
                                               rf"{recorded.sha256}\); use that one"):
        load_text_encoder(encoders[1], recorded, recorded_by="the run recorded", advice="; use that one")
    other = load_text_encoder(encoders[1], recorded, recorded_by="the run recorded", force="force_key")
    assert other.sha256 != recorded.sha256
    assert [r.getMessage() for r in caplog.records if "force_key" in r.getMessage()]
