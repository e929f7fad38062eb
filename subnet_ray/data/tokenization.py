"""Tokenizers built locally for the tiny models, and batch encoding of examples to tensors.

`wordlevel_tokenizer` makes a WordLevel tokenizer over given words (babel's vocabulary),
`wordpiece_tokenizer` a WordPiece one over given texts (a task's training texts; see
data.tokenizer_for); `encode` turns a batch of data.Example (anything with text, text_pair, label) into padded tensors. No hub
download: the vocabulary is a function of the words or texts alone.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4 in every built tokenizer


def _wrap(tok) -> "PreTrainedTokenizerFast":  # noqa: F821
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        # transformers 5 leaves token_type_ids out by default; pair tasks need them.
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def _wordpiece_vocab(words: Counter, vocab_size: int) -> dict[str, int]:
    """Returns specials, every character (word-initial and ##-continuation), then the most frequent words."""
    chars = sorted({c for w in words for c in w})
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for piece in chars + ["##" + c for c in chars]:
        vocab.setdefault(piece, len(vocab))
    # Ties broken by the word itself, so the vocabulary is a function of the texts alone.
    for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(vocab) >= vocab_size:
            break
        vocab.setdefault(w, len(vocab))
    return vocab


def wordlevel_tokenizer(words: Iterable[str]) -> "PreTrainedTokenizerFast":  # noqa: F821
    """Returns a WordLevel tokenizer over `words` (in their order, after the specials), split on whitespace.

    Special tokens [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4; pairs are encoded as
    [CLS] a [SEP] b [SEP] with token_type_ids 0 / 1.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return _wrap(tok)


def wordpiece_tokenizer(texts: Iterable[str], vocab_size: int = 8000) -> "PreTrainedTokenizerFast":  # noqa: F821
    """Returns a WordPiece tokenizer over `texts`; deterministic, no hub. Specials as `wordlevel_tokenizer`.

    The vocabulary holds every character of the texts plus their most frequent words, up to
    `vocab_size` entries (more only if the characters alone exceed it); a rarer word is spelt
    in characters. `tokenizers`' WordPiece trainer is not used: it breaks ties in hash-map
    order, and gave 3-4 different vocabularies in 6 runs.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    # Multilingual: keep accents, split CJK ideographs apart (no spaces in zh / ja).
    normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    words: Counter = Counter()
    for text in texts:
        words.update(w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)))
    tok = Tokenizer(models.WordPiece(_wordpiece_vocab(words, vocab_size), unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre, decoders.WordPiece()
    return _wrap(tok)


PAIR_SEPARATOR = "\n"


def segments(examples: list, tokenizer, paired: bool) -> list[str]:
    """Returns the first segments of `examples` as the tokenizer should see them.

    Encoder tokenizers put [SEP] (or </s></s>) between a pair's two texts. Many decoder
    tokenizers (Qwen's, GPT-2's) have no pair template and would glue premise and hypothesis
    into one run of text; for those the first text ends with a newline, the boundary a
    causal LM reads in its own training data.
    """
    texts = [ex.text for ex in examples]
    if paired and tokenizer.num_special_tokens_to_add(pair=True) == tokenizer.num_special_tokens_to_add(pair=False):
        return [t + PAIR_SEPARATOR for t in texts]
    return texts


def token_lengths(examples: list, tokenizer, max_length: int) -> list[int]:
    """Returns each example's token count after truncation to `max_length`."""
    pairs = [ex.text_pair for ex in examples] if all(ex.text_pair is not None for ex in examples) else None
    texts = segments(examples, tokenizer, pairs is not None)
    return [len(ids) for ids in tokenizer(texts, pairs, truncation=True, max_length=max_length)["input_ids"]]


def length_order(examples: list, tokenizer, max_length: int) -> list[int]:
    """Returns the positions of `examples` sorted by token count (stable), so batches cut from that order pad little."""
    lengths = token_lengths(examples, tokenizer, max_length)
    return sorted(range(len(examples)), key=lambda i: lengths[i])


def encode(examples: list, tokenizer, max_length: int) -> dict:
    """Returns input_ids, attention_mask, token_type_ids (if the tokenizer makes them) and labels as tensors.

    Padded to the longest example of the batch, truncated to `max_length` tokens (longest
    segment first for pairs).
    """
    import torch

    if not examples:
        raise ValueError("encode: no examples")
    has_pair = {ex.text_pair is not None for ex in examples}
    if len(has_pair) > 1:
        raise ValueError("encode: the batch mixes examples with and without text_pair")
    pairs = [ex.text_pair for ex in examples] if has_pair.pop() else None
    batch = tokenizer(
        segments(examples, tokenizer, pairs is not None), pairs, padding="longest", truncation=True, max_length=max_length,
        return_tensors="pt",
    )
    out = dict(batch)
    out["labels"] = torch.tensor([ex.label for ex in examples], dtype=torch.long)
    return out
