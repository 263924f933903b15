"""A span-based joint triple extractor on a Hugging Face encoder: entities *and* relations from raw text.

The model (:class:`TripleExtractor`) is one shared encoder (any ``AutoModel`` encoder: BERT,
MiniLM, XLM-R, ...) with two small heads:

* **Entity spans** by BIO tagging of the word pieces (:data:`TAGS`: ``O``, ``B``, ``I``; untyped).
  Gold tags come from the character spans of the entity mentions (:func:`mention_spans`: the heads
  and tails of the triples, found by the whole-token matcher of distant supervision, every
  occurrence), aligned to word pieces through the fast tokenizer's offset mapping
  (:func:`align_span`: every piece that overlaps the mention; the first is ``B``, the rest ``I``).
  Special tokens and padding carry :data:`IGNORE`.
* **Relations** for every ordered pair of spans ``(head, tail)`` whose texts differ: the pair
  ``[h_start; h_end; t_start; t_end; ctx]`` (hidden states at each span's first and last piece and
  the masked mean of the sentence) goes through a two-layer MLP to one logit per relation. The
  labels are *multi-label* (a pair can hold several relations: ``Rome`` *capital of* / *country*
  ``Italy``; 16% of the training pairs of ``wikidata-distant``), so "no relation" is every sigmoid
  below ``threshold`` rather than a softmax class. At training time the pairs are those of the gold
  spans: every positive pair, plus ``neg_ratio`` × positives negative pairs drawn with the seed
  (:func:`encode_examples`), at most ``max_pairs`` per sentence.

The last relation bias starts at :data:`PRIOR_LOGIT` (sigmoid ≈ 0.02), so training does not
spend its first steps pushing 30-odd relation logits of every pair down from 0.

Decoding (:meth:`TripleExtractor.predict`): arg-max tags → spans (:func:`decode_spans`; an ``I``
that follows ``O`` opens a span) → the text of each span, cut from the sentence by the offsets →
all ordered pairs of distinct span texts (the first ``max_spans`` spans) → relations above
``threshold`` → ``(head text, relation, tail text)``, kept once per :func:`~.example.triple_key`,
which is how :mod:`.metrics` compares them.

The loss (:func:`extraction_loss`) is a pure function: cross-entropy of the tags (ignoring
:data:`IGNORE`) plus ``relation_weight`` × the per-pair sum over relations of the binary
cross-entropy, averaged over the real pairs (padding pairs masked).

A run directory (:meth:`TripleExtractor.save` / :meth:`TripleExtractor.load`) holds
``extractor.json`` (format, :class:`ExtractorConfig`), ``heads.safetensors`` (both heads) and
``encoder/``: a plain HF checkpoint with its tokenizer, or a compactlm quantized run directory
(``quantization.json``; :func:`compactlm.models.load_model` restores its ``QuantLinear`` s). Nothing
is unpickled.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from compactlm.errors import CompactLMError
from compactlm.io import read_json, write_json
from compactlm.tasks.triples.distant import MentionIndex
from compactlm.tasks.triples.example import Triple, TripleExample, normalize, triple_key

TAGS = ("O", "B", "I")
O, B, I = range(3)
IGNORE = -100
FORMAT = 1
META = "extractor.json"
HEADS = "heads.safetensors"
ENCODER = "encoder"
PRIOR_LOGIT = -4.0


@dataclass(frozen=True)
class ExtractorConfig:
    """Settings stored with an extractor.

    Attributes:
        relations: Relation names, in logit order.
        max_length: Word pieces per sentence (longer sentences are truncated).
        max_spans: Predicted spans per sentence that are paired at decoding (first ones kept).
        threshold: A relation is predicted for a pair when its sigmoid exceeds this.
        pair_hidden: Hidden width of the relation MLP (``None``: the encoder's hidden size).
        dropout: Dropout on the hidden states before both heads.
    """

    relations: tuple[str, ...]
    max_length: int = 128
    max_spans: int = 16
    threshold: float = 0.5
    pair_hidden: int | None = None
    dropout: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "relations", tuple(self.relations))
        if not self.relations:
            raise CompactLMError("relations: an extractor needs at least one relation (the training data has none)")
        if self.max_length < 4:
            raise CompactLMError(f"--max-length: expected at least 4 word pieces, got {self.max_length}")
        if not 0 < self.threshold < 1:
            raise CompactLMError(f"--threshold: expected a probability in (0, 1), got {self.threshold}")


# ---- alignment ---------------------------------------------------------------------------------------
def mention_spans(example: TripleExample) -> list[tuple[str, int, int]]:
    """``(entity, start, end)`` character spans of every mention of the example's entities (heads
    and tails), left to right, by the whole-token, longest-first matcher of distant supervision. An
    entity seen only inside another's mention has no span of its own."""
    return MentionIndex(example.entities()).find(example.sentence)


def align_span(start: int, end: int, offsets: Sequence[tuple[int, int]]) -> tuple[int, int] | None:
    """``(first, last)`` word-piece indices overlapping the characters ``[start, end)``; ``None`` when
    no piece does (cut off by truncation). Pieces with an empty offset (special tokens) never match."""
    hit = [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
    return (hit[0], hit[-1]) if hit else None


def bio_tags(spans: Iterable[tuple[int, int]], offsets: Sequence[tuple[int, int]]) -> list[int]:
    """Tag ids of every piece: ``B`` on the first piece of a span, ``I`` on the rest, ``O`` elsewhere,
    :data:`IGNORE` on special tokens (empty offsets)."""
    tags = [O if b > a else IGNORE for a, b in offsets]
    for s, e in spans:
        tags[s] = B
        for i in range(s + 1, e + 1):
            tags[i] = I
    return tags


def decode_spans(tags: Sequence[int], valid: Sequence[bool] | None = None) -> list[tuple[int, int]]:
    """``(first, last)`` piece spans of a BIO tag sequence; ``B`` opens a span, ``I`` continues one
    (or opens one after ``O``), ``O`` and invalid positions (special tokens, padding) close it."""
    spans, start = [], None
    for i, t in enumerate(tags):
        ok = valid is None or valid[i]
        if not ok or t == O or t == IGNORE:
            if start is not None:
                spans.append((start, i - 1))
            start = None
        elif t == B or start is None:
            if start is not None:
                spans.append((start, i - 1))
            start = i
    if start is not None:
        spans.append((start, len(tags) - 1))
    return spans


def _tokenize(tokenizer, sentences: Sequence[str], max_length: int, padding) -> dict:
    if not getattr(tokenizer, "is_fast", False):
        raise CompactLMError("--model: the extractor needs a fast tokenizer (offset mappings); "
                             f"{type(tokenizer).__name__} is not one")
    return tokenizer(list(sentences), truncation=True, max_length=max_length, padding=padding,
                     return_offsets_mapping=True, return_tensors=None)


def encode_examples(examples: Sequence[TripleExample], tokenizer, relations: Sequence[str], max_length: int = 128,
                    neg_ratio: float = 3.0, max_pairs: int = 48, seed: int = 0) -> dict[str, torch.Tensor]:
    """Training tensors of ``examples`` (``N`` first, padded to ``max_length`` / ``max_pairs``).

    Returns:
        ``input_ids``, ``attention_mask`` ``(N, T)``; ``tags`` ``(N, T)`` (:data:`IGNORE` on special
        tokens and padding); ``pairs`` ``(N, P, 4)`` (head first / last piece, tail first / last
        piece); ``pair_labels`` ``(N, P, R)`` (0/1 per relation); ``pair_mask`` ``(N, P)``. Triples
        whose relation is not in ``relations`` are ignored.
    """
    if neg_ratio < 0:
        raise CompactLMError(f"--neg-ratio: expected a non-negative number of negative pairs per positive, got {neg_ratio}")
    if max_pairs < 1:
        raise CompactLMError(f"--max-pairs: expected at least 1 pair per sentence, got {max_pairs}")
    rel_index = {r: i for i, r in enumerate(relations)}
    enc = _tokenize(tokenizer, [e.sentence for e in examples], max_length, "max_length")
    n, t, r = len(examples), max_length, len(relations)
    tags = torch.full((n, t), IGNORE, dtype=torch.long)
    pairs = torch.zeros((n, max_pairs, 4), dtype=torch.long)
    labels = torch.zeros((n, max_pairs, r), dtype=torch.float32)
    mask = torch.zeros((n, max_pairs), dtype=torch.bool)
    rng = random.Random(seed)
    for k, ex in enumerate(examples):
        offsets = [tuple(o) for o in enc["offset_mapping"][k]]
        attn = enc["attention_mask"][k]
        offsets = [o if attn[i] else (0, 0) for i, o in enumerate(offsets)]
        spans = []
        for name, s, e in mention_spans(ex):
            piece = align_span(s, e, offsets)
            if piece is not None:
                spans.append((name, *piece))
        tags[k] = torch.tensor(bio_tags([(s, e) for _, s, e in spans], offsets))
        gold: dict[tuple[str, str], set[int]] = {}
        for h, rel, tl in ex.triples:
            if rel in rel_index:
                gold.setdefault((normalize(h), normalize(tl)), set()).add(rel_index[rel])
        pos, neg = [], []
        for a, (na, sa, ea) in enumerate(spans):
            for b, (nb, sb, eb) in enumerate(spans):
                if a == b or normalize(na) == normalize(nb):
                    continue
                rels = gold.get((normalize(na), normalize(nb)))
                (pos if rels else neg).append(((sa, ea, sb, eb), rels or set()))
        rng.shuffle(neg)
        keep = pos + neg[:int(neg_ratio * max(1, len(pos)))]
        for j, (idx, rels) in enumerate(keep[:max_pairs]):
            pairs[k, j] = torch.tensor(idx)
            labels[k, j, sorted(rels)] = 1.0
            mask[k, j] = True
    return {"input_ids": torch.tensor(enc["input_ids"]), "attention_mask": torch.tensor(enc["attention_mask"]),
            "tags": tags, "pairs": pairs, "pair_labels": labels, "pair_mask": mask}


def trim_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cut a micro-batch to its longest sentence and its largest pair count (the trainer's collate)."""
    t = max(1, int(batch["attention_mask"].sum(-1).max()))
    out = {k: batch[k][:, :t] for k in ("input_ids", "attention_mask", "tags") if k in batch}
    if "pair_mask" in batch:
        p = max(1, int(batch["pair_mask"].sum(-1).max()))
        out.update(pairs=batch["pairs"][:, :p], pair_labels=batch["pair_labels"][:, :p], pair_mask=batch["pair_mask"][:, :p])
    return out


# ---- loss ----------------------------------------------------------------------------------------------
def extraction_loss(tag_logits: torch.Tensor, tags: torch.Tensor, rel_logits: torch.Tensor | None,
                    pair_labels: torch.Tensor | None, pair_mask: torch.Tensor | None,
                    relation_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(loss, parts)``: tag cross-entropy (positions tagged :data:`IGNORE` excluded) plus
    ``relation_weight`` × the mean over real pairs of the per-pair summed binary cross-entropy.

    Args:
        tag_logits: ``(B, T, 3)``; tags ``(B, T)``.
        rel_logits: ``(B, P, R)``; pair_labels ``(B, P, R)``; pair_mask ``(B, P)`` (``None``: no pairs).
    """
    zero = tag_logits.sum() * 0.0
    real = tags != IGNORE
    tag = F.cross_entropy(tag_logits[real], tags[real]) if bool(real.any()) else zero
    rel = zero
    if rel_logits is not None and pair_mask is not None and bool(pair_mask.any()):
        m = pair_mask.to(rel_logits.dtype)
        per_pair = F.binary_cross_entropy_with_logits(rel_logits, pair_labels.to(rel_logits.dtype), reduction="none").sum(-1)
        rel = (per_pair * m).sum() / m.sum()
    return tag + relation_weight * rel, {"tag": tag.detach(), "relation": rel.detach()}


# ---- the model -------------------------------------------------------------------------------------------
class TripleExtractor(nn.Module):
    """Shared encoder + BIO span tagger + pairwise multi-label relation classifier (module doc).

    Args:
        encoder: A bare ``AutoModel`` encoder (its ``last_hidden_state`` is used).
        tokenizer: Its fast tokenizer (offset mappings).
        config: :class:`ExtractorConfig`.
    """

    def __init__(self, encoder: nn.Module, tokenizer, config: ExtractorConfig):
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.config = config
        hidden = int(encoder.config.hidden_size)
        width = config.pair_hidden or hidden
        self.dropout = nn.Dropout(config.dropout)
        self.tagger = nn.Linear(hidden, len(TAGS))
        self.relation = nn.Sequential(nn.Linear(5 * hidden, width), nn.GELU(), nn.Dropout(config.dropout),
                                      nn.Linear(width, len(config.relations)))
        with torch.no_grad():  # start at a low prior (sigmoid ≈ 0.02): most pairs hold no given relation
            self.relation[-1].bias.fill_(PRIOR_LOGIT)

    @property
    def relations(self) -> tuple[str, ...]:
        return self.config.relations

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(hidden (B, T, H), context (B, H))``: last hidden states and their masked mean."""
        from compactlm.quant.activation import padding_mask

        with padding_mask(attention_mask):
            h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        h = self.dropout(h)
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        ctx = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
        return h, ctx

    def relate(self, hidden: torch.Tensor, context: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        """Relation logits ``(B, P, R)`` of the piece-index pairs ``(B, P, 4)``."""
        b, p, _ = pairs.shape
        hdim = hidden.shape[-1]
        idx = pairs.reshape(b, p * 4, 1).expand(-1, -1, hdim)
        feats = hidden.gather(1, idx).reshape(b, p, 4 * hdim)
        feats = torch.cat([feats, context.unsqueeze(1).expand(-1, p, -1)], -1)
        return self.relation(feats)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pairs: torch.Tensor | None = None,
                **_: torch.Tensor) -> dict[str, torch.Tensor]:
        h, ctx = self.encode(input_ids, attention_mask)
        out = {"tag_logits": self.tagger(h)}
        if pairs is not None:
            out["rel_logits"] = self.relate(h, ctx, pairs)
        return out

    # ---- inference ----------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, sentences: Sequence[str], tag_logits: torch.Tensor, offsets: Sequence[Sequence[tuple[int, int]]],
               relate, floor: float | None = None) -> list[list[tuple[Triple, float]]]:
        """``(triple, probability)`` of each sentence whose probability exceeds ``floor`` (default: the
        threshold), from tag logits ``(B, T, 3)`` and a ``relate(pairs) -> (B, P, R)`` logit function
        (module doc: spans → pairs → relations); a triple found twice keeps its highest probability."""
        cfg = self.config
        floor = cfg.threshold if floor is None else floor
        tags = tag_logits.argmax(-1).tolist()
        per_sentence = []
        for k, sentence in enumerate(sentences):
            valid = [b > a for a, b in offsets[k]]
            spans = decode_spans(tags[k][:len(valid)], valid)
            texts: list[tuple[str, int, int]] = []
            for s, e in spans:
                text = sentence[offsets[k][s][0]:offsets[k][e][1]].strip()
                if text:
                    texts.append((text, s, e))
            per_sentence.append(texts[:cfg.max_spans])
        n_pairs = max((len(t) * (len(t) - 1) for t in per_sentence), default=0)
        results: list[list[tuple[Triple, float]]] = [[] for _ in sentences]
        if n_pairs == 0:
            return results
        pairs = torch.zeros((len(sentences), n_pairs, 4), dtype=torch.long)
        index: list[list[tuple[str, str]]] = []
        for k, texts in enumerate(per_sentence):
            names = []
            for a, (ta, sa, ea) in enumerate(texts):
                for b, (tb, sb, eb) in enumerate(texts):
                    if a != b and normalize(ta) != normalize(tb):
                        pairs[k, len(names)] = torch.tensor((sa, ea, sb, eb))
                        names.append((ta, tb))
            index.append(names)
        probs = torch.sigmoid(relate(pairs).float()).cpu()
        for k, names in enumerate(index):
            best: dict[Triple, tuple[Triple, float]] = {}
            for j, (head, tail) in enumerate(names):
                for r in torch.nonzero(probs[k, j] > floor).flatten().tolist():
                    triple, p = (head, self.relations[r], tail), float(probs[k, j, r])
                    key = triple_key(triple)
                    if key not in best or p > best[key][1]:
                        best[key] = (best[key][0] if key in best else triple, p)
            results[k] = list(best.values())
        return results

    @torch.no_grad()
    def predict_scored(self, sentences: Sequence[str], batch_size: int = 32,
                       floor: float | None = None) -> list[list[tuple[Triple, float]]]:
        """``(triple, probability)`` of each sentence above ``floor`` (default: the threshold); eval mode, no grad."""
        if self.tokenizer is None:
            raise CompactLMError("extractor: no tokenizer; build it with the encoder's fast tokenizer")
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))  # batches of similar length
        out: list[list[tuple[Triple, float]]] = [[] for _ in sentences]
        try:
            for i in range(0, len(order), batch_size):
                chunk = [sentences[j] for j in order[i:i + batch_size]]
                enc = _tokenize(self.tokenizer, chunk, self.config.max_length, "longest")
                ids = torch.tensor(enc["input_ids"], device=device)
                attn = torch.tensor(enc["attention_mask"], device=device)
                offsets = [[tuple(o) if attn[k, j] else (0, 0) for j, o in enumerate(row)]
                           for k, row in enumerate(enc["offset_mapping"])]
                h, ctx = self.encode(ids, attn)
                found = self.decode(chunk, self.tagger(h), offsets, lambda p: self.relate(h, ctx, p.to(device)), floor)
                for j, triples in zip(order[i:i + batch_size], found):
                    out[j] = triples
        finally:
            self.train(was_training)
        return out

    def predict(self, sentences: Sequence[str], batch_size: int = 32, threshold: float | None = None) -> list[list[Triple]]:
        """``(head, relation, tail)`` triples of each sentence (probability above ``threshold``,
        default the extractor's)."""
        return [[t for t, _ in found] for found in self.predict_scored(sentences, batch_size, threshold)]

    # ---- run directory -----------------------------------------------------------------------------
    def head_state(self) -> dict[str, torch.Tensor]:
        """The tensors of both heads (everything outside the encoder)."""
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if not k.startswith("encoder.")}

    def save(self, out: str | Path, extra: dict | None = None) -> Path:
        """Write the run directory's model files into ``out`` (module doc); a quantized encoder is
        saved as a compactlm quantized run directory. The caller owns atomicity."""
        from safetensors.torch import save_file

        from compactlm.quant.linear import quant_linears

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        quantized = bool(quant_linears(self.encoder))
        if quantized:
            from compactlm.models.checkpoint import save_quantized

            save_quantized(self.encoder, self.tokenizer, out / ENCODER, unquantized_dtype=None)
        else:
            self.encoder.save_pretrained(out / ENCODER)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(out / ENCODER)
        save_file(self.head_state(), str(out / HEADS), metadata={"format": "pt"})
        write_json(out / META, {"format": FORMAT, "config": dataclasses.asdict(self.config), "quantized": quantized,
                                "layers": int(self.encoder.config.num_hidden_layers), **(extra or {})})
        return out

    @classmethod
    def load(cls, run_dir: str | Path, device: str | torch.device = "cpu") -> "TripleExtractor":
        """An extractor from a run directory written by :meth:`save` (eval mode)."""
        from safetensors.torch import load_file

        from compactlm.models import load_model

        run_dir = Path(run_dir).expanduser()
        if not run_dir.is_dir():
            raise CompactLMError(f"--run: {run_dir} is not a directory (expected a `compactlm re train` run)")
        if not (run_dir / META).is_file():
            raise CompactLMError(f"--run: {run_dir} has no {META}; it is not a `compactlm re train` run directory")
        meta = read_json(run_dir / META)
        if int(meta.get("format", 0)) > FORMAT:
            raise CompactLMError(f"--run: {run_dir} has extractor format {meta.get('format')}; this compactlm reads "
                                 f"up to {FORMAT}: upgrade compactlm")
        try:
            config = ExtractorConfig(**meta["config"])
        except (KeyError, TypeError) as e:
            raise CompactLMError(f"--run: {run_dir / META} is not an extractor config ({e})") from None
        if not (run_dir / HEADS).is_file():
            raise CompactLMError(f"--run: {run_dir} lacks {HEADS}; the run is incomplete or corrupt")
        encoder, tokenizer = load_model(str(run_dir / ENCODER), head="base")
        if tokenizer is None:
            raise CompactLMError(f"--run: {run_dir / ENCODER} has no tokenizer")
        model = cls(encoder, tokenizer, config)
        try:
            heads = load_file(str(run_dir / HEADS))
        except Exception as e:  # safetensors raises its own error types
            raise CompactLMError(f"--run: {run_dir / HEADS} is unreadable ({str(e).splitlines()[0]})") from None
        missing = model.load_state_dict(heads, strict=False)
        bad = [k for k in missing.missing_keys if not k.startswith("encoder.")] + list(missing.unexpected_keys)
        if bad:
            raise CompactLMError(f"--run: {run_dir / HEADS} does not match the extractor (e.g. {bad[0]})")
        return model.to(device).eval()


__all__ = ["ENCODER", "ExtractorConfig", "HEADS", "IGNORE", "META", "TAGS", "TripleExtractor", "align_span",
           "bio_tags", "decode_spans", "encode_examples", "extraction_loss", "mention_spans", "trim_batch"]
