"""ByT5 byte ids, exactly as LLMVoX feeds them to its decoder.

ByT5 has no vocabulary file: a UTF-8 byte b is id b + 3; ids 0-2 are pad, `</s>` and unk. LLMVoX adds
two rows to the embedding table: 384 (`[PAD]`, fed after the text until the speech ends) and 385
(sentence end, fed after the `</s>` of the chunk that closes a sentence). The original tokenizer appends
`</s>` after every chunk it is given, so each streamed word ends in 1.
"""

from __future__ import annotations

from collections.abc import Iterable

EOS_ID = 1  # ByT5 `</s>`
BYTE_OFFSET = 3
PAD_ID = 384  # LLMVoX `[PAD]`: fed after the text, while audio is still being generated
SENTENCE_END_ID = 385  # LLMVoX `EOS`: after the `</s>` of the last chunk of a sentence
TEXT_VOCAB_SIZE = 386


def encode_chunk(chunk: str, *, ends_sentence: bool = False) -> list[int]:
    """Ids of one streamed chunk (a word): bytes + 3, then `</s>`, then 385 if it ends a sentence."""
    ids = [b + BYTE_OFFSET for b in chunk.encode("utf-8")]
    ids.append(EOS_ID)
    if ends_sentence:
        ids.append(SENTENCE_END_ID)
    return ids


def encode_words(words: Iterable[str]) -> list[int]:
    """Ids of one sentence given as words: each word its own chunk, the last one closing the sentence."""
    words = [w for w in words if w]
    ids: list[int] = []
    for i, word in enumerate(words):
        ids.extend(encode_chunk(word, ends_sentence=i == len(words) - 1))
    return ids


def plain_text(ids: Iterable[int]) -> str:
    """The plain text of decoder byte ids (chunk and sentence markers become spaces): the transcript."""
    out = bytearray()
    for i in ids:
        i = int(i)
        out.append(i - BYTE_OFFSET if BYTE_OFFSET <= i < BYTE_OFFSET + 256 else 0x20)
    return " ".join(out.decode("utf-8", errors="replace").split())


def decode_ids(ids: Iterable[int]) -> str:
    """Readable text for ids (special ids shown as markers); for logs and debugging."""
    out: list[str] = []
    buf = bytearray()
    for i in ids:
        if BYTE_OFFSET <= i < BYTE_OFFSET + 256:
            buf.append(i - BYTE_OFFSET)
            continue
        out.append(buf.decode("utf-8", errors="replace"))
        buf.clear()
        out.append({EOS_ID: " ", PAD_ID: "", SENTENCE_END_ID: "|"}.get(i, f"<{i}>"))
    out.append(buf.decode("utf-8", errors="replace"))
    return "".join(out)
