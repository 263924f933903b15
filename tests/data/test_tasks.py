"""Task formatting as lm-eval 0.4.x defines it, on hand-made documents."""

import pytest

from compactlm.data.tasks import TASKS, hellaswag_preprocess, load_task
from compactlm.errors import CompactLMError


def fmt(name, doc):
    return TASKS[name].format(doc)


def test_arc():
    doc = {"question": "Which is a gas?", "answerKey": "C",
           "choices": {"text": ["ice", "water", "steam"], "label": ["A", "B", "C"]}}
    ex = fmt("arc_easy", doc)
    assert ex.requests == (("Question: Which is a gas?\nAnswer:", " ice"), ("Question: Which is a gas?\nAnswer:", " water"),
                           ("Question: Which is a gas?\nAnswer:", " steam"))
    assert ex.gold == 2 and ex.choices == ("ice", "water", "steam")
    doc["choices"]["label"] = ["1", "2", "3"]
    doc["answerKey"] = "1"
    assert fmt("arc_challenge", doc).gold == 0


def test_hellaswag_preprocessing():
    assert hellaswag_preprocess(" A [title] B [header] c  d ") == "A. B c d"
    doc = {"activity_label": "Baking cookies", "ctx_a": "A woman mixes dough.", "ctx_b": "she",
           "endings": ["puts it in the oven [step]", " eats  it."], "label": "1"}
    ex = fmt("hellaswag", doc)
    assert ex.requests[0] == ("Baking cookies: A woman mixes dough. She", " puts it in the oven ")
    assert ex.requests[1][1] == " eats it."
    assert ex.gold == 1 and ex.choices == ("puts it in the oven ", "eats it.")


def test_piqa():
    ex = fmt("piqa", {"goal": "Open a jar", "sol1": "twist lid", "sol2": "kick it", "label": 0})
    assert ex.requests == (("Question: Open a jar\nAnswer:", " twist lid"), ("Question: Open a jar\nAnswer:", " kick it"))
    assert ex.gold == 0


def test_winogrande_partial_scoring():
    doc = {"sentence": "The trophy didn't fit in the suitcase because the _ was too big.",
           "option1": "trophy", "option2": "suitcase", "answer": "1"}
    ex = fmt("winogrande", doc)
    # the context varies with the option, the continuation is the fixed remainder of the sentence
    assert ex.requests == (
        ("The trophy didn't fit in the suitcase because the trophy", " was too big."),
        ("The trophy didn't fit in the suitcase because the suitcase", " was too big."),
    )
    assert ex.gold == 0
    assert fmt("winogrande", {**doc, "answer": "2"}).gold == 1


def test_boolq():
    ex = fmt("boolq", {"passage": "Cats are mammals.", "question": "is a cat a mammal", "answer": True})
    assert ex.requests == (("Cats are mammals.\nQuestion: is a cat a mammal?\nAnswer:", " no"),
                           ("Cats are mammals.\nQuestion: is a cat a mammal?\nAnswer:", " yes"))
    assert ex.gold == 1 and ex.choices == ("no", "yes")
    assert fmt("boolq", {"passage": "p", "question": "q", "answer": False}).gold == 0


def test_openbookqa():
    doc = {"question_stem": "The sun is a", "answerKey": "B",
           "choices": {"text": ["planet", "star"], "label": ["A", "B"]}}
    ex = fmt("openbookqa", doc)
    assert ex.requests == (("The sun is a", " planet"), ("The sun is a", " star")) and ex.gold == 1


def test_sciq():
    doc = {"support": "  Darwin wrote it.", "question": "Who?", "distractor1": "a", "distractor2": "b",
           "distractor3": "c", "correct_answer": "darwin"}
    ex = fmt("sciq", doc)
    assert ex.requests[0] == ("Darwin wrote it.\nQuestion: Who?\nAnswer:", " a")
    assert ex.requests[3][1] == " darwin" and ex.gold == 3


def test_unknown_task_and_bad_limit():
    with pytest.raises(CompactLMError, match="unknown; choose from arc_easy"):
        load_task("mmlu_pro")
    with pytest.raises(CompactLMError, match="limit"):
        load_task("arc_easy", limit=0)
