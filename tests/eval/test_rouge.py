"""ROUGE-L on hand-made strings, and the batched generation / evaluation protocol on a tiny model."""

import pytest
import torch

from compactlm.data.char_tokenizer import char_tokenizer
from compactlm.data.instructions import InstructionExample, pad_id, prompt_ids
from compactlm.eval.generation import evaluate_rouge, generate_responses, rouge_l
from compactlm.models.tiny import tiny_model


def test_rouge_l_hand_made():
    assert rouge_l("the cat sat on the mat", ["the cat sat on the mat"]) == pytest.approx(100.0)
    assert rouge_l("completely different", ["the cat sat"]) == 0.0
    # LCS "the cat the mat" (4 tokens) of 6 / 6 -> P = R = F = 4/6
    assert rouge_l("the cat was on the mat", ["the cat sat by the mat"]) == pytest.approx(100 * 4 / 6)
    # stemming: "running" ~ "run", case and punctuation ignored
    assert rouge_l("Running dogs!", ["run dog"]) == pytest.approx(100.0)
    # max over references
    assert rouge_l("paris", ["London", "Paris, France", "paris"]) == pytest.approx(100.0)
    assert rouge_l("x", []) == 0.0


def test_generate_is_seeded_restores_rng_and_stops_at_eos():
    model, tok = tiny_model("llama"), char_tokenizer()
    prompts = [prompt_ids(tok, InstructionExample("a", "Hi", ("x",))), [5, 6, 7]]
    state = torch.get_rng_state()
    a = generate_responses(model, prompts, pad_id(tok), tok.eos_token_id, 6, 1.0, 1.0, seed=3, batch_size=1)
    assert torch.equal(torch.get_rng_state(), state)
    b = generate_responses(model, prompts, pad_id(tok), tok.eos_token_id, 6, 1.0, 1.0, seed=3, batch_size=1)
    assert a == b
    # left padding does not change what a prompt produces (greedy, batched vs one at a time)
    one = [generate_responses(model, [p], pad_id(tok), None, 5, 0.0)[0] for p in prompts]
    assert generate_responses(model, prompts, pad_id(tok), None, 5, 0.0, batch_size=2) == one
    c = generate_responses(model, prompts, pad_id(tok), tok.eos_token_id, 6, 1.0, 1.0, seed=4)
    assert a != c
    g1 = generate_responses(model, prompts, pad_id(tok), None, 6, 0.0)
    assert all(len(r) == 6 for r in g1)
    eos = g1[0][2]
    g2 = generate_responses(model, prompts[:1], pad_id(tok), eos, 6, 0.0)
    assert g2[0][-1] == eos and eos not in g2[0][:-1] and len(g2[0]) <= 3


def test_evaluate_rouge_per_task_seen_unseen_and_seeds():
    model, tok = tiny_model("llama"), char_tokenizer()
    sets = {t: [InstructionExample(t, f"Say {w}", (w,)) for w in ("ab", "cd")] for t in ("s1", "s2", "u1")}
    r = evaluate_rouge(model, tok, sets, seen=["s1", "s2"], seeds=(0, 1), max_new_tokens=4)
    assert r["seen_tasks"] == ["s1", "s2"] and r["unseen_tasks"] == ["u1"]
    s = r["sampled"]
    assert len(s["per_seed"]) == 2 and set(s["tasks"]) == {"s1", "s2", "u1"}
    assert s["seen"]["mean"] == pytest.approx(sum((p["s1"] + p["s2"]) / 2 for p in s["per_seed"]) / 2)
    assert s["unseen"]["mean"] == pytest.approx(s["tasks"]["u1"]["mean"])
    assert 0 <= r["greedy"]["seen"] <= 100 and r["examples"]["s1"]
