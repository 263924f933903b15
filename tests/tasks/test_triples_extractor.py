"""The span-based triple extractor: alignment, decoding, loss, training, save/load, compression (tiny models, offline)."""

import pytest
import torch

from compactlm.data.char_tokenizer import char_tokenizer
from compactlm.errors import CompactLMError
from compactlm.models.tiny import tiny_model
from compactlm.tasks.triples import (
    ExtractorConfig, ExtractorTrainConfig, TripleExample, TripleExtractor, evaluate_extractor, extraction_loss,
    calibration_ids, prune_extractor, quantize_extractor, train_extractor,
)
from compactlm.tasks.triples.extractor import (
    B, I, IGNORE, O, align_span, decode_spans, encode_examples, mention_spans, trim_batch,
)

RELS = ("capital of", "located in")


def _extractor(model_type="bert", relations=RELS, seed=0):
    torch.manual_seed(seed)
    return TripleExtractor(tiny_model(model_type, head="base"), char_tokenizer(), ExtractorConfig(relations, max_length=96))


def _corpus(n=16):
    return [TripleExample(f"Town{i} lies in Land{i % 4} .", ((f"Town{i}", "located in", f"Land{i % 4}"),))
            for i in range(n)]


def test_align_span_multi_piece_and_special_tokens():
    offsets = [(0, 0), (0, 3), (3, 5), (6, 9), (0, 0)]  # [CLS] "New" "ar" "Ork" [SEP]
    assert align_span(0, 5, offsets) == (1, 2)  # a mention over two pieces
    assert align_span(6, 9, offsets) == (3, 3)
    assert align_span(10, 12, offsets) is None  # cut off by truncation
    assert align_span(0, 1, [(0, 0)]) is None  # special tokens never match


def test_encode_tags_every_mention_and_labels_pairs():
    ex = TripleExample("Rome and Lazio and Rome again .", (("Rome", "located in", "Lazio"),))
    assert [m[0] for m in mention_spans(ex)] == ["Rome", "Lazio", "Rome"]  # repeated mention found twice
    enc = encode_examples([ex], char_tokenizer(), RELS, max_length=40, neg_ratio=5)
    tags = enc["tags"][0].tolist()
    # char tokenizer: one piece per character, no special tokens
    assert tags[:5] == [B, I, I, I, O] and tags[9:14] == [B, I, I, I, I] and tags[19:23] == [B, I, I, I]
    assert tags[len(ex.sentence):] == [IGNORE] * (40 - len(ex.sentence))  # padding ignored
    pairs = {tuple(p): lab.tolist() for p, lab, m in zip(enc["pairs"][0].tolist(), enc["pair_labels"][0], enc["pair_mask"][0]) if m}
    assert pairs[(0, 3, 9, 13)] == [0.0, 1.0] and pairs[(19, 22, 9, 13)] == [0.0, 1.0]  # both Rome mentions -> Lazio
    assert pairs[(9, 13, 0, 3)] == [0.0, 0.0]  # the reverse pair is a negative
    assert (0, 3, 19, 22) not in pairs  # two mentions of one entity are never paired


def test_encode_with_wordpiece_offsets_of_a_bert_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "new", "##ark", "is", "in", "texas", "."])}
    tk = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]")
    ex = TripleExample("newark is in texas .", (("newark", "located in", "texas"),))
    enc = encode_examples([ex], tok, RELS, max_length=10)
    assert enc["tags"][0].tolist()[:8] == [IGNORE, B, I, O, O, B, O, IGNORE]  # CLS, new ##ark, ..., SEP
    assert enc["pairs"][0, 0].tolist() == [1, 2, 5, 5]


def test_decode_spans_bio_rules():
    assert decode_spans([O, B, I, O, I, I, B, B]) == [(1, 2), (4, 5), (6, 6), (7, 7)]
    assert decode_spans([B, I, I], valid=[True, False, True]) == [(0, 0), (2, 2)]


def test_decode_hand_made_logits_gives_triples():
    m = _extractor()
    sentence = "Rome in Italy"
    offsets = [(i, i + 1) for i in range(len(sentence))] + [(0, 0)]
    tags = [B, I, I, I, O, O, O, O, B, I, I, I, I, O]
    logits = torch.full((1, len(tags), 3), -5.0)
    for i, t in enumerate(tags):
        logits[0, i, t] = 5.0
    seen = {}

    def relate(pairs):
        seen["pairs"] = pairs[0].tolist()
        out = torch.full((1, pairs.shape[1], len(RELS)), -4.0)
        out[0, 0, 0] = 4.0  # Rome -> Italy: capital of
        out[0, 0, 1] = 3.0  # and located in (multi-label)
        out[0, 1, 1] = -1.0  # Italy -> Rome: below the threshold
        return out

    found = m.decode([sentence], logits, [offsets], relate)
    assert seen["pairs"] == [[0, 3, 8, 12], [8, 12, 0, 3]]
    assert [[t for t, _ in f] for f in found] == [[("Rome", "capital of", "Italy"), ("Rome", "located in", "Italy")]]
    assert found[0][1][1] == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())
    low = m.decode([sentence], logits, [offsets], relate, floor=0.2)  # Italy -> Rome (p = 0.27) above a lower floor
    assert ("Italy", "located in", "Rome") in [t for t, _ in low[0]]


def test_loss_is_masked_on_padding():
    torch.manual_seed(0)
    tag_logits = torch.randn(2, 5, 3)
    tags = torch.tensor([[B, I, O, IGNORE, IGNORE], [O, B, O, O, IGNORE]])
    rel = torch.randn(2, 3, 2)
    labels = torch.tensor([[[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    loss, parts = extraction_loss(tag_logits, tags, rel, labels, mask)
    t2, r2 = tag_logits.clone(), rel.clone()
    t2[0, 3:] += 100.0
    t2[1, 4] -= 50.0
    r2[0, 2] += 30.0
    r2[1, 1:] -= 30.0
    assert torch.allclose(extraction_loss(t2, tags, r2, labels, mask)[0], loss)
    r2[0, 0, 0] -= 3.0  # a real pair
    assert extraction_loss(t2, tags, r2, labels, mask)[0] > loss
    assert set(parts) == {"tag", "relation"} and torch.allclose(parts["tag"] + parts["relation"], loss)
    nothing, _ = extraction_loss(tag_logits, torch.full_like(tags, IGNORE), rel, labels, torch.zeros_like(mask))
    assert float(nothing) == 0.0  # no real token and no real pair: zero, not NaN


def test_few_steps_lower_the_loss_and_learn_the_corpus():
    m = _extractor()
    data = _corpus()
    report = train_extractor(m, data, data[:4], ExtractorTrainConfig(steps=40, batch_size=4, lr=3e-3, eval_every=20),
                             progress=False)
    assert report["loss_last"] < 0.3 * report["loss_first"]
    assert [c["step"] for c in report["validation_curve"]] == [20, 40]
    assert report["selected_step"] in (20, 40)
    scores = evaluate_extractor(m, data, data)
    assert scores["all"]["f1"] > 0.9 and scores["unseen_share"] == 0.0


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, monkeypatch):
    from compactlm.tasks.triples import training

    data = _corpus()
    cfg = ExtractorTrainConfig(steps=30, batch_size=4, lr=3e-3, eval_every=10)
    full = _extractor()
    rep_full = train_extractor(full, data, data[:4], cfg, checkpoint_dir=tmp_path / "a", progress=False)
    calls = {"n": 0}
    real = training.validation_f1

    def flaky(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # killed after step 20 was trained and checkpointed, before it was scored
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(training, "validation_f1", flaky)
    with pytest.raises(KeyboardInterrupt):
        train_extractor(_extractor(), data, data[:4], cfg, checkpoint_dir=tmp_path / "b", progress=False)
    resumed = _extractor(seed=5)  # other head init: everything must come from the checkpoint
    rep = train_extractor(resumed, data, data[:4], cfg, checkpoint_dir=tmp_path / "b", progress=False)
    assert rep["resumed_at_step"] == 20 and rep["selected_step"] == rep_full["selected_step"]
    assert [c["step"] for c in rep["validation_curve"]] == [10, 20, 30]
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k


@pytest.mark.parametrize("model_type", ["bert", "xlm-roberta"])
def test_save_load_identical_predictions(tmp_path, model_type):
    m = _extractor(model_type)
    data = _corpus(8)
    train_extractor(m, data, [], ExtractorTrainConfig(steps=15, batch_size=4, lr=3e-3), progress=False)
    m.save(tmp_path / "run")
    loaded = TripleExtractor.load(tmp_path / "run")
    sentences = [e.sentence for e in data] + ["Town3 lies in Land9 and Town3 ."]
    assert loaded.predict(sentences) == m.predict(sentences)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():  # eager (tiny) vs the library's default attention after loading: float-level equal
        assert torch.allclose(loaded(ids, torch.ones_like(ids))["tag_logits"], m.eval()(ids, torch.ones_like(ids))["tag_logits"],
                              atol=1e-5)


def test_quantized_and_pruned_extractors_round_trip(tmp_path):
    from compactlm.quant.linear import quant_linears

    m = _extractor()
    data = _corpus(8)
    train_extractor(m, data, [], ExtractorTrainConfig(steps=10, batch_size=4, lr=3e-3), progress=False)
    rep = quantize_extractor(m, "w4a16-g32")
    assert rep["scheme"] == "w4a16-g32" and len(quant_linears(m.encoder)) == 12  # 2 layers x 6 linears
    m.save(tmp_path / "q")
    q = TripleExtractor.load(tmp_path / "q")
    assert quant_linears(q.encoder) and q.predict([e.sentence for e in data]) == m.predict([e.sentence for e in data])
    with pytest.raises(CompactLMError, match="weight-only"):
        quantize_extractor(_extractor(), "w8a8")
    calib = calibration_ids(m, [e.sentence for e in data], samples=3, seq_len=8)
    first = m.tokenizer(data[0].sentence, truncation=True, max_length=m.config.max_length)["input_ids"]
    assert calib.shape == (3, 8) and calib.flatten()[: min(8, len(first))].tolist() == first[:8]
    f = _extractor()
    rep = quantize_extractor(f, "w4a16", "flexround", calib, iters=20, lr=1e-2)
    assert len(quant_linears(f.encoder)) == 12 and len(rep["block_losses"]) == 2
    assert all(b["train_loss_after"] < b["train_loss_before"] for b in rep["block_losses"])  # learned beats its RTN start
    with pytest.raises(CompactLMError, match="calib"):
        quantize_extractor(_extractor(), "w4a16", "flexround")  # a learned method needs calibration
    p = prune_extractor(_extractor(), 1)
    assert len(p.encoder.encoder.layer) == 1 and p.encoder.config.num_hidden_layers == 1
    p.save(tmp_path / "p")
    assert TripleExtractor.load(tmp_path / "p").encoder.config.num_hidden_layers == 1


def test_trim_batch_cuts_tokens_and_pairs():
    enc = encode_examples(_corpus(3), char_tokenizer(), RELS, max_length=64)
    out = trim_batch(enc)
    assert out["input_ids"].shape[1] == max(len(e.sentence) for e in _corpus(3))
    assert out["pairs"].shape[1] == 2 and out["pair_mask"].all()


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(CompactLMError, match="not a directory"):
        TripleExtractor.load(tmp_path / "missing")
    (tmp_path / "x").mkdir()
    with pytest.raises(CompactLMError, match="no extractor.json"):
        TripleExtractor.load(tmp_path / "x")
    with pytest.raises(CompactLMError, match="relations"):
        ExtractorConfig(relations=())
