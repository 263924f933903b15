"""Relational triple extraction measured on unseen triples (Lee, Lee, Yang, Yang, NAACL 2022).

* :mod:`.example` — :class:`TripleExample` (sentence, ``(head, relation, tail)`` triples, entity
  types) and the normalisation every comparison uses.
* :mod:`.formats` — readers of NYT / WebNLG-style JSON and JSON-lines files.
* :mod:`.wikidata` — BIG-bench ``qa_wikidata`` prompts parsed into facts, and entity types from the
  relations' domains and ranges.
* :mod:`.distant` — distant supervision: sentences that mention both entities of a fact.
* :mod:`.sources` — :func:`load_splits`: the offline ``wikidata-distant`` corpus, local files, hub ids.
* :mod:`.splits` — the standard split, :func:`rearrange` (chosen unseen share) and :func:`sift`.
* :mod:`.augment` — type-consistent entity swapping: augmented test sets, training augmentation.
* :mod:`.metrics` — seen/unseen bookkeeping and micro P/R/F1.
* :mod:`.parse` — the ``head | relation | tail`` output format of a generative extractor.
* :mod:`.prepare` — :func:`prepare_data`: corpus, split, augmented test set and training
  augmentation of one experiment (what ``re data`` writes and ``re train`` trains on).
* :mod:`.extractor` — :class:`TripleExtractor`: the span-based joint extractor (encoder, BIO
  spans, pairwise relations), its loss, decoding and run-directory format.
* :mod:`.training` — :func:`train_extractor` (the one trainer, selection on validation),
  :func:`evaluate_extractor`, :func:`quantize_extractor` (RTN, FlexRound, LRQ; :func:`calibration_ids`), :func:`prune_extractor` (depth).
"""

from __future__ import annotations

from compactlm.tasks.triples.augment import EntityPool, augment_test_set, augment_training, swap_entities
from compactlm.tasks.triples.example import Triple, TripleExample, normalize, triple_key, triple_set
from compactlm.tasks.triples.formats import read_file
from compactlm.tasks.triples.metrics import PRF, is_seen, report, score, unseen_share
from compactlm.tasks.triples.parse import format_triples, parse_generation, parse_triples
from compactlm.tasks.triples.sources import DISTANT, DistantConfig, load_splits
from compactlm.tasks.triples.splits import Splits, rearrange, sift, sifted, standard_split
from compactlm.tasks.triples.prepare import Prepared, prepare_data
from compactlm.tasks.triples.extractor import ExtractorConfig, TripleExtractor, extraction_loss
from compactlm.tasks.triples.training import (
    ExtractorTrainConfig, build_extractor, calibration_ids, evaluate_extractor, prune_extractor, quantize_extractor,
    train_extractor,
)

__all__ = [
    "ExtractorConfig", "ExtractorTrainConfig", "Prepared", "TripleExtractor", "build_extractor", "evaluate_extractor",
    "calibration_ids", "extraction_loss", "prepare_data", "prune_extractor", "quantize_extractor", "train_extractor",
    "DISTANT", "PRF", "DistantConfig", "EntityPool", "Splits", "Triple", "TripleExample", "augment_test_set",
    "augment_training", "format_triples", "is_seen", "load_splits", "normalize", "parse_generation",
    "parse_triples", "read_file", "rearrange", "report", "score", "sift", "sifted", "standard_split",
    "swap_entities", "triple_key", "triple_set", "unseen_share",
]
