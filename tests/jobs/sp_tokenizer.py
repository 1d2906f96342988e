"""A real Llama-2/Mistral-style SentencePiece tokenizer as a fast tokenizer, built offline.

Why here: the template tests must tokenise with the kind of tokenizer the recipes train, not only
the tiny byte-level one: SentencePiece's dummy prefix ("▁") and special-token splits are where
whole-string and piece-by-piece tokenisation part ways. See tests/fixtures/tokenizers/README.md.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

MODEL = Path(__file__).resolve().parents[1] / "fixtures" / "tokenizers" / "mistral-7b-v0.1.model"


@lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE
    from transformers.convert_slow_tokenizer import import_protobuf
    from transformers.tokenization_utils_base import generate_merges

    proto = import_protobuf().ModelProto()
    proto.ParseFromString(MODEL.read_bytes())
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    tok = Tokenizer(BPE(vocab, generate_merges(vocab), unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in ("<unk>", "<s>", "</s>")])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", vocab["<s>"])])
    return tok.to_str()


def sp_tokenizer():
    """A fresh PreTrainedTokenizerFast (callers may add tokens to it)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_tokenizer_json()), bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>", padding_side="right")
