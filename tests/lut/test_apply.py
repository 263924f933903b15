"""Swapping non-linearities in tiny models of every supported architecture, and undoing it."""

import pytest
import torch

from compactlm.errors import CompactLMError
from compactlm.lut.apply import LUTActivation, LUTNorm, RecordingTable, apply_luts, calibrate_luts
from compactlm.lut.functions import ALL_OPS, TARGETS
from compactlm.models.specs import get_spec
from compactlm.models.tiny import tiny_model

EXPECTED = {  # op -> count replaced in the 2-layer tiny models
    "llama": {"silu": 2, "rmsnorm": 5, "softmax": 2},
    "qwen2": {"silu": 2, "rmsnorm": 5, "softmax": 2},
    "gemma3_text": {"gelu": 2, "rmsnorm": 13, "softmax": 2},  # 4 block norms + q/k norms + final
    "gpt2": {"gelu": 2, "layernorm": 5, "softmax": 2},
    "opt": {"layernorm": 5, "softmax": 2},  # ReLU stays: it is already piecewise linear
    "bert": {"gelu": 2, "layernorm": 5, "softmax": 2},  # embedding norm + 2 per block
    "xlm-roberta": {"gelu": 2, "layernorm": 5, "softmax": 2},
}


def _out(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def test_apply_then_remove_restores_exact_output(any_tiny, token_batch, tables16):
    model_type, model = any_tiny
    ref = _out(model, token_batch)
    keys = list(model.state_dict())
    attn = model.config._attn_implementation
    handle = apply_luts(model, tables16)
    assert handle.replaced == EXPECTED[model_type]
    assert list(model.state_dict()) == keys  # norms share their parameters
    lut_out = _out(model, token_batch)
    assert not torch.equal(lut_out, ref)  # the tables are really used
    assert float((lut_out - ref).abs().max()) < 0.1
    handle.remove()
    assert torch.equal(_out(model, token_batch), ref)
    assert model.config._attn_implementation == attn
    assert not any(isinstance(m, (LUTActivation, LUTNorm)) for m in model.modules())
    handle.remove()  # idempotent


def test_exact_stand_in_tables_reproduce_the_model(any_tiny, token_batch):
    """With tables that compute the exact functions, the replaced ops equal the originals."""
    _, model = any_tiny
    ref = _out(model, token_batch)
    with apply_luts(model, {f: RecordingTable(f) for f in TARGETS}) as handle:
        got = _out(model, token_batch)
        assert handle.replaced
    assert torch.allclose(got, ref, atol=1e-4, rtol=1e-4)
    assert torch.equal(_out(model, token_batch), ref)


@pytest.mark.parametrize("op", ALL_OPS)
def test_single_op(op, token_batch, tables16):
    model = tiny_model("gpt2" if op in ("gelu", "layernorm") else "llama")
    ref = _out(model, token_batch)
    with apply_luts(model, tables16, ops=[op]) as h:
        assert set(h.replaced) == {op} and set(h.tables) == set({"gelu": ["gelu"], "silu": ["silu"],
            "softmax": ["exp", "reciprocal"], "layernorm": ["rsqrt"], "rmsnorm": ["rsqrt"]}[op])
        assert not torch.equal(_out(model, token_batch), ref)
    assert torch.equal(_out(model, token_batch), ref)


def test_softmax_lut_respects_padding(token_batch, tables16):
    model = tiny_model("llama")
    ids, mask = token_batch[:2], torch.ones(2, 32, dtype=torch.long)
    mask[1, :8] = 0  # left padding
    with torch.no_grad(), apply_luts(model, tables16, ops=["softmax"]):
        full = model(input_ids=ids[1:, 8:]).logits
        padded = model(input_ids=ids, attention_mask=mask).logits[1:, 8:]
    assert torch.allclose(full, padded, atol=1e-4)


def test_errors_leave_model_untouched(token_batch, tables16):
    model = tiny_model("llama")
    ref = _out(model, token_batch)
    with pytest.raises(CompactLMError, match="no table for"):
        apply_luts(model, {"silu": tables16["silu"], "exp": tables16["exp"]})
    with pytest.raises(CompactLMError, match="--ops"):
        apply_luts(model, tables16, ops="swish")
    with pytest.raises(CompactLMError, match="does not compute"):
        spec = get_spec(model)
        object.__setattr__(spec, "norm_type", "layernorm")  # a wrong table entry must fail loudly
        try:
            apply_luts(model, tables16)
        finally:
            object.__setattr__(spec, "norm_type", "rmsnorm")
    assert torch.equal(_out(model, token_batch), ref)
    assert not any(isinstance(m, (LUTActivation, LUTNorm)) for m in model.modules())


class _BatchedSiLU(torch.nn.Module):
    """SiLU that refuses inputs without a batch axis: the 1-D probe cannot run it."""

    def forward(self, x):
        if x.dim() < 2:
            raise RuntimeError("expects [batch, ..., features]")
        return torch.nn.functional.silu(x)


def test_a_requested_activation_that_cannot_be_probed_is_an_error(token_batch, tables16):
    model = tiny_model("llama")
    for block in model.model.layers:
        block.mlp.act_fn = _BatchedSiLU()
    ref = _out(model, token_batch)
    with pytest.raises(CompactLMError, match=r"--ops silu: cannot apply.*layers\.0\.mlp\.act_fn.*expects \[batch") as e:
        apply_luts(model, tables16, ops=["silu", "softmax"])
    assert "\n" not in str(e.value)
    assert torch.equal(_out(model, token_batch), ref)
    with apply_luts(model, tables16, ops=["softmax"]) as h:  # not requested: not probed
        assert h.replaced == {"softmax": 2}


def test_a_missing_activation_module_is_an_error(tables16):
    model = tiny_model("llama")
    del model.model.layers[1].mlp.act_fn
    with pytest.raises(CompactLMError, match=r"--ops silu: cannot apply.*layers\.1\.mlp has no activation module"):
        apply_luts(model, tables16, ops=["silu"])


def test_calibration_refits_on_recorded_inputs(token_batch):
    model = tiny_model("gpt2")
    ref = _out(model, token_batch)
    tables = calibrate_luts(model, [token_batch[:2], token_batch[2:]], entries=8, steps=10)
    assert set(tables) == set(TARGETS) - {"silu"}
    for t in tables.values():
        assert t.method == "nn-lut-calibrated" and t.entries == 8 and t.meta["calibration_samples"] > 0
    assert torch.equal(_out(model, token_batch), ref)  # recording left the model as it was
    with apply_luts(model, tables):
        assert float((_out(model, token_batch) - ref).abs().max()) < 0.2
