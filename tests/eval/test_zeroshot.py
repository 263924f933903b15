"""Zero-shot scoring against a direct per-request computation; HFLM tokenization rules; acc_norm."""

import importlib

import pytest
import torch
import torch.nn.functional as F

from compactlm.data.char_tokenizer import char_tokenizer
from compactlm.data.tasks import MCExample
from compactlm.eval import loglikelihoods, zeroshot
from compactlm.eval.logits import _split_matches
from compactlm.eval.zeroshot import encode_request, score_examples
from compactlm.models.tiny import tiny_model

zs = importlib.import_module("compactlm.eval.zeroshot")  # the module, not the function of that name

REQUESTS = [
    ("Question: What is ice?\nAnswer:", " frozen water"),
    ("Question: What is ice?\nAnswer:", " a planet"),
    ("The cat sat on the ", "mat."),  # trailing space moves into the continuation
    ("A", " b"),
    ("", "Empty context scores from the prefix token."),
    ("Longer context " * 6 + "ends here.", " x"),
]


def direct_ll(model, tok, context, continuation):
    ctx, cont = encode_request(tok, context, continuation)
    x = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = F.log_softmax(model(x).logits[0].float(), -1)
    n = len(ctx)
    return sum(logp[n - 1 + i, t].item() for i, t in enumerate(cont))


@pytest.mark.parametrize("batch_size", [1, 4])
def test_matches_direct_computation(decoder_tiny, batch_size):
    name, model = decoder_tiny
    model.eval()
    tok = char_tokenizer()
    got = loglikelihoods(model, tok, REQUESTS, batch_size=batch_size)
    want = [direct_ll(model, tok, c, t) for c, t in REQUESTS]
    assert got == pytest.approx(want, rel=1e-4, abs=1e-4), name


def test_split_head_path_is_used_for_llama():
    assert _split_matches(tiny_model("llama").eval())


def test_encode_request_rules():
    tok = char_tokenizer()
    ctx, cont = encode_request(tok, "ab ", "c")
    assert tok.decode(ctx) == "ab" and tok.decode(cont) == " c"
    ctx, cont = encode_request(tok, "", "xy")
    assert ctx == [tok.bos_token_id] and tok.decode(cont) == "xy"
    bos_tok = char_tokenizer(add_bos=True)
    ctx, cont = encode_request(bos_tok, "Q:", " A")
    assert ctx[0] == bos_tok.bos_token_id and bos_tok.bos_token_id not in cont and bos_tok.decode(cont) == " A"
    ctx, _ = encode_request(bos_tok, "<bos>Q:", " A")  # text already starts with BOS: none added
    assert ctx.count(bos_tok.bos_token_id) == 1


def test_acc_norm_divides_by_choice_characters():
    ex = MCExample(requests=(("q", " a"), ("q", " bbbb")), gold=1, choices=("a", "bbbb"))
    r = score_examples([ex], [-2.0, -4.0])
    assert r["acc"] == 0.0 and r["acc_norm"] == 1.0  # -2/1 < -4/4
    ties = MCExample(requests=(("q", " a"), ("q", " b")), gold=0, choices=("a", "b"))
    assert score_examples([ties], [-1.0, -1.0])["acc"] == 1.0  # first index wins ties, as np.argmax


def test_zeroshot_aggregates(monkeypatch):
    model = tiny_model("llama").eval()
    tok = char_tokenizer()
    examples = [
        MCExample(((c, " yes"), (c, " no")), gold=i % 2, choices=("yes", "no"))
        for i, c in enumerate(["Is it cold?", "Is fire hot?", "Two plus two?"])
    ]
    monkeypatch.setattr(zs, "load_task", lambda name, limit=None: examples[:limit])
    out = zeroshot(model, tok, "fake_a,fake_b", limit=2, batch_size=3)
    lls = [direct_ll(model, tok, c, t) for ex in examples[:2] for c, t in ex.requests]
    want = score_examples(examples[:2], lls)
    assert set(out["tasks"]) == {"fake_a", "fake_b"}
    assert out["tasks"]["fake_a"] == {"acc": want["acc"], "acc_norm": want["acc_norm"], "n": 2}
    assert out["avg_acc"] == pytest.approx(want["acc"])
