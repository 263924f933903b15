"""Block capture and the reconstruction engine (tiny random models)."""

import pytest
import torch

from compactlm.api import quantize
from compactlm.errors import CompactLMError
from compactlm.models.capture import BlockRunner, block_output, capture_first_block_input
from compactlm.models.specs import get_blocks
from compactlm.models.tiny import TINY_TYPES, tiny_model
from compactlm.ptq import engine as R
from compactlm.ptq import store as S
from compactlm.quant.linear import QuantLinear


@pytest.fixture
def calib():
    return torch.randint(2, 128, (4, 24), generator=torch.Generator().manual_seed(1))


def _grids(model):
    return {n: (m.int_weight.clone(), m.weight_scale.clone(), m.weight_zero_point.clone())
            for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def _assert_same_grids(a, b):
    assert a.keys() == b.keys() and a
    for name in a:
        for x, y in zip(a[name], b[name]):
            assert torch.equal(x, y), name


@pytest.mark.parametrize("model_type", TINY_TYPES)
def test_replayed_blocks_reproduce_the_forward(model_type):
    # sequence longer than gemma3's sliding window (16): sliding and full layers differ
    model = tiny_model(model_type)
    ids = torch.randint(2, 128, (3, 40), generator=torch.Generator().manual_seed(0))
    blocks = get_blocks(model)
    seen = []
    handle = blocks[-1].register_forward_hook(lambda m, a, out: seen.append(block_output(out)))
    with torch.no_grad():
        model(input_ids=ids)
    handle.remove()
    runner = BlockRunner(model, ids)
    x = capture_first_block_input(model, ids)
    with torch.no_grad():
        for i, block in enumerate(blocks):
            x = torch.cat([runner(i, block, x[:2]), runner(i, block, x[2:])])  # two batch sizes
    assert torch.equal(x, seen[0])


def test_loss_sums_over_sequence_and_respects_mask():
    out_q, out_fp = torch.ones(2, 3, 4), torch.zeros(2, 3, 4)
    assert R.reconstruction_loss(out_q, out_fp).item() == pytest.approx(3.0)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert R.reconstruction_loss(out_q, out_fp, mask).item() == pytest.approx(1.5)


def test_engine_lowers_block_error_and_is_deterministic(calib):
    reports, grids = [], []
    for _ in range(2):
        model = tiny_model("llama")
        reports.append(quantize(model, "lrq", "w3a16", calib=calib, iters=15, lr=1e-2, seed=3))
        grids.append(_grids(model))
    for block in reports[0]["blocks"]:
        assert block["loss_after"] < block["loss_before"]
    _assert_same_grids(*grids)
    assert [b["loss_after"] for b in reports[0]["blocks"]] == [b["loss_after"] for b in reports[1]["blocks"]]


def test_resume_after_interruption_matches_uninterrupted_run(calib, tmp_path, monkeypatch):
    opts = dict(iters=6, lr=1e-2, seed=1)
    reference = tiny_model("llama")
    quantize(reference, "flexround", "w4a16", calib=calib, **opts)

    real_train = R._train_block

    def crash_on_block_1(runner, index, *args, **kwargs):
        if index == 1:
            raise KeyboardInterrupt("simulated interruption")
        return real_train(runner, index, *args, **kwargs)

    work = tmp_path / "run.partial"
    monkeypatch.setattr(R, "_train_block", crash_on_block_1)
    with pytest.raises(KeyboardInterrupt):
        quantize(tiny_model("llama"), "flexround", "w4a16", calib=calib, work_dir=str(work), **opts)
    monkeypatch.setattr(R, "_train_block", real_train)
    assert (work / "block_0.safetensors").exists() and not (work / "block_1.safetensors").exists()

    resumed = tiny_model("llama")
    report = quantize(resumed, "flexround", "w4a16", calib=calib, work_dir=str(work), **opts)
    assert report["resumed_blocks"] == 1
    _assert_same_grids(_grids(reference), _grids(resumed))
    with torch.no_grad():
        assert torch.equal(reference(input_ids=calib).logits, resumed(input_ids=calib).logits)


def test_work_dir_of_another_run_is_refused(calib, tmp_path):
    work = str(tmp_path / "w")
    quantize(tiny_model("llama"), "lrq", "w4a16", calib=calib, iters=1, work_dir=work)
    with pytest.raises(CompactLMError, match="--work-dir"):
        quantize(tiny_model("llama"), "lrq", "w3a16", calib=calib, iters=1, work_dir=work)


def test_spilled_activations_give_the_same_result(calib, tmp_path):
    a, b = tiny_model("llama"), tiny_model("llama")
    quantize(a, "lrq", "w4a16", calib=calib, iters=4, work_dir=str(tmp_path / "a"))
    quantize(b, "lrq", "w4a16", calib=calib, iters=4, work_dir=str(tmp_path / "b"), spill_mb=0.0)
    _assert_same_grids(_grids(a), _grids(b))


def test_callers_requires_grad_flags_are_restored(calib):
    model = tiny_model("llama")
    model.model.embed_tokens.weight.requires_grad_(False)  # a caller's own choice, kept as it is
    before = {n: p.requires_grad for n, p in model.named_parameters() if "layers" not in n or "norm" in n}
    assert any(before.values()) and not all(before.values())
    quantize(model, "lrq", "w4a16", calib=calib, iters=1)
    assert {n: p.requires_grad for n, p in model.named_parameters() if n in before} == before


def test_callers_requires_grad_flags_are_restored_after_a_failure(calib, monkeypatch):
    model = tiny_model("llama")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("simulated interruption")

    monkeypatch.setattr(R, "_train_block", crash)
    with pytest.raises(KeyboardInterrupt):
        quantize(model, "flexround", "w4a16", calib=calib, iters=2)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("spill_mb", [2048.0, 0.0])
def test_no_resume_state_is_written_without_a_work_dir(calib, monkeypatch, spill_mb):
    seen = []
    real_cleanup = S.WorkDir.cleanup

    def snapshot_then_cleanup(self):
        seen.append(sorted(p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file()))
        real_cleanup(self)
        seen.append(self.path.exists())

    monkeypatch.setattr(S.WorkDir, "cleanup", snapshot_then_cleanup)
    report = quantize(tiny_model("llama"), "lrq", "w4a16", calib=calib, iters=1, spill_mb=spill_mb)
    files, still_there = seen
    assert files == [] and not still_there and report["work_dir"] is None  # spills are gone, nothing else was written


def test_resume_state_streams_activations_instead_of_passing_them_to_safetensors(calib, tmp_path, monkeypatch):
    """Block inputs go to .npy written from the (memory-mapped) buffer; safetensors gets grids only
    (its save_file builds the whole file in memory, which would pull a spill back into RAM)."""
    saved_keys = []
    real_save = S.save_file

    def spy(tensors, path, *args, **kwargs):
        saved_keys.extend(tensors)
        return real_save(tensors, path, *args, **kwargs)

    monkeypatch.setattr(S, "save_file", spy)
    work = tmp_path / "w"
    quantize(tiny_model("llama"), "lrq", "w4a16", calib=calib, iters=1, work_dir=str(work), spill_mb=0.0)
    assert saved_keys and not {"x_fp", "x_q"} & set(saved_keys)
    assert all(k.endswith(("int_weight", "scale", "zero_point", "act_range")) for k in saved_keys)
    assert sorted(p.name for p in work.glob("inputs_*")) == ["inputs_2.x_fp.npy", "inputs_2.x_q.npy"]
    assert not (work / "spill").exists()


def test_resume_with_spilled_activations_matches_uninterrupted_run(calib, tmp_path, monkeypatch):
    opts = dict(iters=4, lr=1e-2, seed=2, spill_mb=0.0)
    reference = tiny_model("llama")
    quantize(reference, "lrq", "w4a16", calib=calib, **opts)
    real_train = R._train_block

    def crash_on_block_1(runner, index, *args, **kwargs):
        if index == 1:
            raise KeyboardInterrupt("simulated interruption")
        return real_train(runner, index, *args, **kwargs)

    work = tmp_path / "run.partial"
    monkeypatch.setattr(R, "_train_block", crash_on_block_1)
    with pytest.raises(KeyboardInterrupt):
        quantize(tiny_model("llama"), "lrq", "w4a16", calib=calib, work_dir=str(work), **opts)
    monkeypatch.setattr(R, "_train_block", real_train)
    resumed = tiny_model("llama")
    assert quantize(resumed, "lrq", "w4a16", calib=calib, work_dir=str(work), **opts)["resumed_blocks"] == 1
    _assert_same_grids(_grids(reference), _grids(resumed))


@pytest.mark.parametrize("bad", [dict(iters=-1), dict(lr=0.0), dict(batch_size=0), dict(clip="mse"),
                                 dict(smooth_alpha=1.5)])
def test_bad_engine_options(calib, bad):
    with pytest.raises(CompactLMError):
        quantize(tiny_model("llama"), "flexround", "w4a16", calib=calib, **bad)


def test_needs_calibration():
    with pytest.raises(CompactLMError, match="calib"):
        quantize(tiny_model("llama"), "lrq", "w4a16", calib=None)
