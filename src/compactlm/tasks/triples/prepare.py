"""The data of one experiment: a corpus, its split, the augmented test set and the training augmentation.

:func:`prepare_data` is what ``compactlm re data`` writes and what ``compactlm re train`` trains on,
so both build their splits with the same code:

1. the corpus: ``wikidata-distant``, a local file or folder, ``hf:<id>`` (:func:`.sources.load_splits`),
   or a folder written by ``compactlm re data`` (its ``train`` / ``validation`` / ``test`` and, if
   present, ``test_augmented`` files, read as they are; ``train_augmented`` is ignored: the
   augmentation is redrawn with the caller's seed);
2. the split: ``standard`` (as loaded), ``rearranged`` (:func:`.splits.rearrange` of the whole pool to
   ``unseen_share``) or ``sifted`` (:func:`.splits.sifted`);
3. the augmented test set (:func:`.augment.augment_test_set`, ``augmented_test`` copies per sentence,
   entity pool of all splits), unless the folder brought one and the split is unchanged;
4. the training augmentation (:func:`.augment.augment_training`, ``augment_train`` new sentences per
   training sentence), never producing a triple of the test set or of the augmented test set (so
   the augmented test set stays unseen for the augmented model too).

Seen/unseen is always decided against the *original* training sentences (:attr:`Prepared.train`);
the augmentation avoids every test triple, so the test sets' partition is the same with and without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from compactlm.errors import CompactLMError
from compactlm.tasks.triples import formats
from compactlm.tasks.triples.augment import EntityPool, augment_test_set, augment_training
from compactlm.tasks.triples.example import TripleExample, triple_set
from compactlm.tasks.triples.metrics import unseen_share as _unseen_share
from compactlm.tasks.triples.sources import DISTANT, DistantConfig, load_splits
from compactlm.tasks.triples.splits import SPLIT_SEED, Splits, all_examples, rearrange, sifted

SPLITS = ("standard", "rearranged", "sifted")
DATA_FILES = ("train", "validation", "test", "test_augmented")


@dataclass
class Prepared:
    """Splits, the augmented test set, the training augmentation and their statistics."""

    splits: Splits
    test_augmented: list[TripleExample]
    train_added: list[TripleExample] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    @property
    def train(self) -> list[TripleExample]:
        """The original training sentences (the reference of *seen*)."""
        return self.splits.train

    @property
    def train_all(self) -> list[TripleExample]:
        """Training sentences with the augmentation appended."""
        return [*self.splits.train, *self.train_added]


def is_data_dir(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by ``compactlm re data`` (``train.jsonl`` and ``test.jsonl``)."""
    p = Path(path).expanduser()
    return p.is_dir() and (p / "train.jsonl").is_file() and (p / "test.jsonl").is_file()


def read_data_dir(path: str | Path) -> tuple[Splits, list[TripleExample] | None]:
    """The splits of a ``compactlm re data`` folder and its augmented test set (``None`` if absent)."""
    p = Path(path).expanduser()
    parts = {name: formats.read_file(p / f"{name}.jsonl") if (p / f"{name}.jsonl").is_file() else None
             for name in DATA_FILES}
    splits = Splits(parts["train"], parts["validation"] or [], parts["test"], {"split": "given", "source": str(path)})
    return splits, parts["test_augmented"]


def prepare_data(data: str = DISTANT, split: str = "standard", seed: int = SPLIT_SEED, unseen_share: float = 0.5,
                 augmented_test: int = 1, augment_train: float = 0.0, augment_seed: int | None = None,
                 facts: str | None = None) -> Prepared:
    """Build the data of one experiment (module doc).

    Args:
        data: ``wikidata-distant``, a local ``.json``/``.jsonl`` file or folder, a ``compactlm re data``
            folder, or ``hf:<dataset id>[:<config>]``.
        split: ``standard``, ``rearranged`` or ``sifted``.
        seed: Seed of the split and the augmented test set.
        unseen_share: Target unseen share of a rearranged test set.
        augmented_test: Entity-swapped copies of each test sentence (0: no augmented test set).
        augment_train: New training sentences per training sentence (0: none).
        augment_seed: Seed of the training augmentation (default ``seed``).
        facts: A local qa_wikidata ``task.json`` for ``wikidata-distant``.
    """
    if split not in SPLITS:
        raise CompactLMError(f"--split: expected one of {', '.join(SPLITS)}, got {split!r}")
    if augmented_test < 0:
        raise CompactLMError(f"--augmented-test: expected 0 or more copies, got {augmented_test}")
    given_aug = None
    if data != DISTANT and not str(data).startswith("hf:") and is_data_dir(data):
        splits, given_aug = read_data_dir(data)
    else:
        config = DistantConfig(facts=facts) if data == DISTANT else None
        splits = load_splits(data, seed=seed, config=config)
    if split == "rearranged":
        splits = rearrange(all_examples(splits), unseen_share, test_size=len(splits.test),
                           validation_size=len(splits.validation), seed=seed)
        given_aug = None
    elif split == "sifted":
        splits = sifted(splits)  # same test set: a given augmented test set still applies
    stats: dict = {"data": str(data), "split": split, "summary": splits.summary(), "stats": splits.stats}
    test_aug: list[TripleExample] = []
    if given_aug is not None:
        test_aug = given_aug
        stats["augmented_test"] = {"source": "given", "sentences": len(test_aug),
                                   "unseen_share": _unseen_share(test_aug, splits.train)}
    elif augmented_test:
        pool = EntityPool.from_examples(all_examples(splits))
        test_aug, stats["augmented_test"] = augment_test_set(splits.test, splits.train, pool, seed=seed,
                                                             copies=augmented_test)
        stats["augmented_test"]["sentences"] = len(test_aug)
        stats["augmented_test"]["unseen_share"] = _unseen_share(test_aug, splits.train)
    added: list[TripleExample] = []
    if augment_train:
        added, stats["augment_train"] = augment_training(
            splits.train, augment_train, seed=seed if augment_seed is None else augment_seed,
            avoid=triple_set(splits.test) | triple_set(test_aug))
    return Prepared(splits, test_aug, added, stats)


__all__ = ["DATA_FILES", "Prepared", "SPLITS", "is_data_dir", "prepare_data", "read_data_dir"]
