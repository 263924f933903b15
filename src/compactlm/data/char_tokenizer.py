"""A character-level tokenizer for the tiny random models (vocabulary 128, no download).

Tiny models (``tiny-<model_type>``) are built from configs and ship no tokenizer; this one maps
``\\n`` and printable ASCII to their own ids (other characters to ``<unk>``), so text corpora and
zero-shot tasks run end to end on them (tests, ``compactlm eval --model tiny-llama``).
"""

from __future__ import annotations

import string

SPECIALS = ("<pad>", "<eos>", "<unk>", "<bos>")
CHARS = "\n" + "".join(c for c in string.printable if c.isprintable())


def char_tokenizer(add_bos: bool = False):
    """A ``PreTrainedTokenizerFast`` over single characters (99 ids).

    Args:
        add_bos: Prepend ``<bos>`` by default (``add_special_tokens=True``), like Llama-2 tokenizers.
    """
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + tuple(CHARS))}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tk.decoder = decoders.Fuse()
    if add_bos:
        tk.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>",
                                   bos_token="<bos>", name_or_path=f"compactlm-char{'-bos' if add_bos else ''}")
