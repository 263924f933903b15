"""Depth-pruned (and quantized) students: the kept weights are the teacher's, the model is smaller and plain HF."""

import pytest
import torch
import transformers as T

from compactlm.distill.students import decoder_keep, depth_pruned_student, parse_keep, quantize_student
from compactlm.errors import CompactLMError
from compactlm.models.specs import blocks_path, get_blocks
from compactlm.models.tiny import tiny_model


def test_decoder_keep_spreads_with_both_ends():
    assert decoder_keep(30, 15)[0] == 0 and decoder_keep(30, 15)[-1] == 29 and len(decoder_keep(30, 15)) == 15
    assert decoder_keep(30, 10) == [0, 3, 6, 10, 13, 16, 19, 23, 26, 29]
    assert decoder_keep(4, 4) == [0, 1, 2, 3] and decoder_keep(4, 1) == [3]
    assert parse_keep("0,2", 4) == [0, 2] and parse_keep("3", 4) == decoder_keep(4, 3) == [0, 2, 3]
    for bad in (0, 5, "1,1", "a", [7]):
        with pytest.raises(CompactLMError, match="--student-layers"):
            parse_keep(bad, 4)


def _four_block_teacher(model_type):
    overrides = {"num_hidden_layers": 4}
    if model_type == "qwen2":
        overrides["layer_types"] = ["full_attention"] * 4
    if model_type == "gemma3_text":
        overrides["layer_types"] = ["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"]
    return tiny_model(model_type, **overrides)


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "opt", "qwen2", "gemma3_text"])
def test_student_keeps_embeddings_and_chosen_blocks_exactly(model_type, tmp_path):
    teacher = _four_block_teacher(model_type)
    t_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    student, kept = depth_pruned_student(teacher, 2)
    assert kept == [0, 3]
    assert teacher.state_dict().keys() == t_state.keys()  # teacher untouched
    assert len(get_blocks(student)) == 2 and student.config.num_hidden_layers == 2
    prefix = blocks_path(student)
    s_state = student.state_dict()
    for key, value in s_state.items():
        if key.startswith(prefix + "."):
            i, rest = key[len(prefix) + 1:].split(".", 1)
            source = f"{prefix}.{kept[int(i)]}.{rest}"
        else:
            source = key  # embeddings, final norm, lm_head
        assert torch.equal(value, t_state[source]), key
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters())
    if getattr(student.config, "layer_types", None) is not None:
        assert list(student.config.layer_types) == [teacher.config.layer_types[i] for i in kept]
        if model_type == "gemma3_text":
            assert list(student.config.layer_types) == ["sliding_attention", "sliding_attention"]
    ids = torch.randint(2, 128, (2, 9))
    with torch.no_grad():
        ref = student(input_ids=ids).logits
        gen = student.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                               pad_token_id=0)
    assert gen.shape == (2, 13)  # the KV cache works (layer_idx renumbered)
    student.save_pretrained(tmp_path / "s")
    loaded = T.AutoModelForCausalLM.from_pretrained(tmp_path / "s").eval()
    assert loaded.config.num_hidden_layers == 2
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, ref, atol=1e-5)


def test_quantized_student_is_fake_quant():
    from compactlm.quant.fake import FakeQuantLinear

    student, _ = depth_pruned_student(_four_block_teacher("llama"), 2)
    quantize_student(student, "w4a16-g16")
    assert sum(isinstance(m, FakeQuantLinear) for m in student.modules()) == 2 * 7


def test_encoder_teacher_is_refused():
    with pytest.raises(CompactLMError, match="causal LM"):
        depth_pruned_student(tiny_model("bert"), 1)
