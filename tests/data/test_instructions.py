"""Instruction data: JSONL formats, hub errors, task splits, prompt templates and response masks."""

import json

import pytest
import torch

from compactlm.data import instructions as I
from compactlm.data.char_tokenizer import char_tokenizer
from compactlm.errors import CompactLMError


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_dolly_and_minillm_and_selfinst_rows(tmp_path):
    dolly = _write(tmp_path / "dolly.jsonl", [
        {"instruction": "Summarise.", "context": "A long text.", "response": "Short.", "category": "summarization"},
        {"instruction": "Name a colour.", "context": "", "response": "Blue", "category": "open_qa"},
    ])
    ex = I.load_instructions(str(dolly))
    assert [(e.task, e.instruction, e.input, e.references) for e in ex] == [
        ("summarization", "Summarise.", "A long text.", ("Short.",)), ("open_qa", "Name a colour.", "", ("Blue",))]
    minillm = _write(tmp_path / "self_inst.jsonl", [
        {"instruction": "Add.", "input": "1+1", "output": ["2", "two"]},
        {"id": "x", "motivation_app": "Calc", "instruction": "Mul.", "instances": [{"input": "2*3", "output": "6"}]},
    ])
    ex = I.load_instructions(str(minillm))
    assert ex[0].task == "self_inst" and ex[0].references == ("2", "two") and ex[0].response == "2"
    assert (ex[1].task, ex[1].input, ex[1].references) == ("Calc", "2*3", ("6",))


def test_bad_sources_are_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(CompactLMError, match="--data: no such file"):
        I.load_instructions(str(tmp_path / "missing.jsonl"))
    bad = _write(tmp_path / "bad.jsonl", [{"text": "no instruction"}])
    with pytest.raises(CompactLMError, match="no instruction"):
        I.load_instructions(str(bad))
    import datasets

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach 'databricks/databricks-dolly-15k' on the Hub\nmore lines")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(CompactLMError) as e:
        I.load_instructions("databricks/databricks-dolly-15k")
    assert "\n" not in str(e.value) and "olmo-gen" in str(e.value)


def _examples():
    return [I.InstructionExample(t, f"{t} question {i}?", (f"answer {i}",)) for t in ("a", "b", "c") for i in range(10)]


def test_split_by_task_unseen_only_in_eval():
    sp = I.split_instructions(_examples(), unseen=["c"], eval_per_task=3, train_samples=12, seed=1)
    assert sp.seen == ("a", "b") and sp.unseen == ("c",)
    assert {e.task for e in sp.train} == {"a", "b"} and len(sp.train) == 12
    assert {t: len(v) for t, v in sp.eval.items()} == {"a": 3, "b": 3, "c": 3}
    train_ids = {(e.task, e.instruction) for e in sp.train}
    assert not train_ids & {(e.task, e.instruction) for v in sp.eval.values() for e in v}
    again = I.split_instructions(_examples(), unseen=["c"], eval_per_task=3, train_samples=12, seed=1)
    assert again.train == sp.train  # seeded
    with pytest.raises(CompactLMError, match="--unseen-tasks"):
        I.split_instructions(_examples(), unseen=["zzz"], eval_per_task=3)
    # a predicate drops examples and counts them
    sp = I.split_instructions(_examples(), ["c"], 2, keep=lambda e: not e.instruction.endswith("1?"))
    assert sp.skipped["a"] == 1 and sp.skipped["b"] == 1 and sp.skipped.get("c", 0) <= 1
    assert all(not e.instruction.endswith("1?") for e in sp.train)


def test_encode_masks_only_response_tokens_without_chat_template():
    tok = char_tokenizer()
    ex = [I.InstructionExample("a", "Say hi.", ("hi",)), I.InstructionExample("a", "Count.", ("one two three",), "to 3")]
    b = I.encode_examples(tok, ex, seq_len=220, max_response=8)
    assert b["input_ids"].shape == (2, 220)
    for i, e in enumerate(ex):
        prompt = I.prompt_text(tok, e)
        assert "### Response:" in prompt and ("### Input:\nto 3" in prompt) == bool(e.input)
        resp = b["input_ids"][i][b["response_mask"][i] == 1].tolist()
        expected = tok(e.response, add_special_tokens=False)["input_ids"]
        if len(expected) < 8:
            expected = expected + [tok.eos_token_id]
        assert resp == expected[:8]  # capped at max_response, EOS when it fits
        assert b["prompt_len"][i] == len(tok(prompt)["input_ids"])
        # padding is neither attended nor a response token
        assert (b["response_mask"][i] <= b["attention_mask"][i]).all()
        assert b["attention_mask"][i].sum() == b["prompt_len"][i] + len(resp)
    with pytest.raises(CompactLMError, match="--seq-len"):
        I.encode_examples(tok, ex, seq_len=20, max_response=8)
    assert not I.fits(tok, 20, 8)(ex[0]) and I.fits(tok, 220, 8)(ex[0])


def test_chat_template_is_used_when_present():
    tok = char_tokenizer()
    tok.chat_template = "{% for m in messages %}<{{ m['content'] }}>{% endfor %}{% if add_generation_prompt %}A:{% endif %}"
    e = I.InstructionExample("a", "Do.", ("ok",), "x")
    ids = I.prompt_ids(tok, e)
    assert tok.decode(ids) == "<Do.\n\nx>A:"
    b = I.encode_examples(tok, [e], 40, 4)
    assert tok.decode(b["input_ids"][0][b["response_mask"][0] == 1]) == "ok<eos>"


@pytest.mark.slow
def test_olmo_gen_default_tasks():
    ex = I.load_instructions("olmo-gen:squad,jeopardy,drop")
    tasks = {e.task for e in ex}
    assert tasks == {"squad", "jeopardy", "drop"} and len(ex) > 3000
    assert all(e.references and e.instruction for e in ex)
    assert I.default_unseen("olmo-gen", tasks) == ("drop",)
