"""The AttentionInterface glue of the NN-LUT softmax: GQA, registration and its undoing."""

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from compactlm.lut.apply import RecordingTable
from compactlm.lut.attention import _repeat_kv, install_lut_attention, make_lut_attention, restore_attention
from compactlm.models.tiny import tiny_model


def test_exact_tables_give_eager_attention_with_grouped_kv():
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 4, 5, 8, generator=g), torch.randn(2, 2, 5, 8, generator=g), torch.randn(2, 2, 5, 8, generator=g)
    mask = torch.zeros(2, 1, 5, 5).masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf"))
    module = torch.nn.Module()
    module.num_key_value_groups = 2
    out, probs = make_lut_attention(RecordingTable("exp"), RecordingTable("reciprocal"))(module, q, k, v, mask)
    want = torch.softmax(q @ _repeat_kv(k, 2).transpose(-1, -2) * 8 ** -0.5 + mask, dim=-1)
    assert torch.allclose(probs, want, atol=1e-6)
    assert torch.allclose(out, (want @ _repeat_kv(v, 2)).transpose(1, 2), atol=1e-6)
    assert torch.equal(_repeat_kv(k, 2)[:, 1], k[:, 0]) and torch.equal(_repeat_kv(k, 2)[:, 2], k[:, 1])


def test_restore_switches_back_and_unregisters():
    model = tiny_model("llama")
    before = model.config._attn_implementation
    name, original = install_lut_attention(model, RecordingTable("exp"), RecordingTable("reciprocal"), "compactlm_lut_test")
    assert model.config._attn_implementation == name and original == before
    assert name in AttentionInterface._global_mapping and name in AttentionMaskInterface._global_mapping
    restore_attention(model, name, original)
    assert model.config._attn_implementation == before
    assert name not in AttentionInterface._global_mapping and name not in AttentionMaskInterface._global_mapping
