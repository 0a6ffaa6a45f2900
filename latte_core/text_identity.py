"""Which text encoder made a set of caption embeddings: one small frozen record for the cache, the
loader, training and sampling, and the one error kind of an encoder that cannot be used or is not the
one recorded. It imports nothing heavy, so the cache's readers hold it without loading MindSpore; the
one function that loads and checks an encoder is latte_core.text_encoder.load_text_encoder.

    TextEncoderIdentity(path, sha256, width, max_length)
        path        the encoder's folder, as it was read (it may move: encoders are compared by sha256)
        sha256      the digest of its files (text_encoder_sha256: config, weights, tokenizer files)
        width       D of its (max_length, D) embeddings
        max_length  tokens per prompt (77)

Its serialized forms are those the files always held: `record()` is state.json's and summary.json's
{"path", "sha256"}; cache.json keeps sha256, width and max_length as text_encoder_sha256,
text_embed_dim and text_max_length, and text_encoder.json the path. It reads as that mapping too
(identity["width"], identity == {"path": ..., ...}).
"""
import collections.abc
import dataclasses

from .errors import UserError


class TextEncoderError(UserError):
    """A text-encoder folder that cannot be used, or an encoder other than the one a cache or run recorded."""


@dataclasses.dataclass(frozen=True, eq=False)
class TextEncoderIdentity(collections.abc.Mapping):
    path: str
    sha256: str
    width: int
    max_length: int

    @classmethod
    def of(cls, encoder):
        """The identity of a TextEncoder read from a folder."""
        return cls(encoder.folder, encoder.sha256, encoder.width, encoder.max_length)

    @classmethod
    def from_record(cls, record, source):
        """The identity a state.json records ({"path", "sha256"}; width and max_length unknown: None), or
        None when it records none; anything else is a TextEncoderError naming `source`."""
        if record is None:
            return None
        if not (isinstance(record, dict) and all(isinstance(record.get(k), str) for k in ("path", "sha256"))):
            raise TextEncoderError(f"{source}: text_encoder must be {{\"path\": ..., \"sha256\": ...}}, got {record!r}")
        return cls(record["path"], record["sha256"], None, None)

    def record(self):
        """What state.json and summary.json record: {"path", "sha256"}."""
        return {"path": self.path, "sha256": self.sha256}

    def __str__(self):
        return f"{self.path} (sha256 {self.sha256})"

    # the mapping view: the keys of the JSON forms
    def __getitem__(self, key):
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(self.__dataclass_fields__)

    def __len__(self):
        return len(self.__dataclass_fields__)
