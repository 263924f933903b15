"""Distillation of generative LMs into smaller students: PromptKD and the KD family, on the one trainer.

Every method is a ``compute_loss(model, batch)`` of :class:`compactlm.train.Trainer` over packed
instruction pairs (:mod:`compactlm.data.instructions`: ``[prompt, response, pad]`` rows); every
loss counts response tokens only (after the one-position shift). ``p_T`` teacher, ``q_S`` student,
per token over the vocabulary (:mod:`compactlm.distill.losses`):

==========  ==========================================================================================
method      per step
==========  ==========================================================================================
sft         CE of the ground-truth response (no teacher)
kd          forward ``KL(p_T ‖ q_S)`` on ground-truth responses
rkl         reverse ``KL(q_S ‖ p_T)`` on ground-truth responses (DistiLLM's RKL baseline)
seqkd       forward KL on *teacher-generated* responses: greedy, generated once before training and
            cached in ``$COMPACTLM_CACHE/distill/`` (keyed by teacher weights, prompts and length)
gkd         generalised JSD (β = ``gkd_beta``); with probability ``on_policy`` a micro-batch's
            responses are sampled from the current student (GKD's mixed on/off-policy data)
distillm    skew reverse KL (``skew="forward"``: skew forward KL), α = ``skew_alpha``, with adaptive
            off-policy replay: with probability ``p`` a micro-batch is student-generated — fresh
            samples are pushed into a FIFO buffer of ``replay_size`` and the batch is drawn from the
            buffer; ``p`` starts at 0 and rises by 0.1 each time the validation loss (this loss on a
            fixed held-out batch of training-task pairs, every ``val_every`` steps) rose by more
            than ``replay_threshold`` since the previous check (METHODS.md §3.1; "more than 0.1" read
            as an absolute increase)
promptkd    sample responses from the student (temperature 1, top-p 1); the teacher's soft prompt φ
            (``peft`` prompt tuning, ``prompt_length`` tokens initialised from the embeddings of
            ``prompt_init``, repeated or cut to length) minimises ``KL(p_{T,φ} ‖ q_S) + λ_t·KL(p_{T,φ}
            ‖ p_T)``, ``λ_t = 1 − t/steps``; the student minimises ``KL(q_S ‖ p_{T,φ})`` on the same
            sequences
==========  ==========================================================================================

PromptKD on one trainer: the trained module is a :class:`PromptedPair` (student + prompted
teacher, whose only trainable tensor is φ) and the step minimises ``L_T + L_S`` with each term's
other model detached, so φ gets exactly ∇L_T and the student exactly ∇L_S. Both move in the same
optimizer step (one AdamW, one learning rate, as the authors' 5e-5 for both; gradient clipping on
their joint norm): the student's target uses φ_t rather than the just-updated φ_{t+1} of the
authors' sequential loop — a one-step lag of size O(lr).

Sampling (on-policy methods) goes through ``model.generate`` with the draws seeded by
``(seed, step, micro-batch)``; the loops' own state (DistiLLM's replay buffer and schedule) is
saved beside the trainer checkpoint at the same steps, so a resumed run continues identically.
The models run in eval mode (no dropout) while training (``Trainer(train_mode=False)``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from compactlm.distill import losses as L
from compactlm.errors import CompactLMError

log = logging.getLogger(__name__)

METHODS = ("sft", "kd", "rkl", "seqkd", "gkd", "distillm", "promptkd")
ON_POLICY = ("gkd", "distillm", "promptkd")
STATE_FILE = "distill_state.pt"


@dataclass
class DistillConfig:
    """Settings of one distillation run (the ``compactlm distill`` flags, ``_`` for ``-``).

    Attributes:
        teacher: Teacher model (embedded name, folder, run dir, hub id, ``tiny-<type>``).
        student: Student model sharing the teacher's tokenizer; ``None``: a depth-pruned teacher copy.
        student_layers: Blocks the pruned student keeps: a count (evenly spaced, first and last kept)
            or comma-separated indices; ``None``: half of the teacher's.
        student_scheme: QAT scheme to fake-quantize the student with (``None``: full precision).
        loss: One of :data:`METHODS`.
        data: Instruction source (``olmo-gen``, ``PATH.jsonl``, hub id).
        unseen_tasks: Comma-separated held-out tasks (``None``: the source's default split).
        samples: Training pairs.
        seq_len: Max tokens per packed pair (prompt + response); longer prompts are skipped.
        max_new_tokens: Response cap (labels and sampling).
        steps, batch_size, grad_accum, lr, warmup, schedule: Optimisation (:class:`~compactlm.train.TrainConfig`).
        prompt_length: PromptKD soft-prompt tokens.
        prompt_init: Text whose token embeddings initialise the soft prompt.
        gkd_beta: GKD's JSD β.
        on_policy: GKD's share of student-sampled micro-batches.
        skew_alpha: DistiLLM's α.
        skew: DistiLLM's ``"reverse"`` (default) or ``"forward"`` skew KL.
        replay_size: DistiLLM's replay buffer size.
        replay_threshold: Validation-loss increase that raises DistiLLM's replay probability by 0.1.
        val_every: Steps between DistiLLM's validation checks.
        val_samples: Training-task pairs held out as the validation batch (all methods, same data).
        eval_samples: Evaluation pairs per task (0: no evaluation).
        eval_seeds: Sampling seeds of the ROUGE-L evaluation.
        eval_greedy: Also evaluate greedy decoding.
        ppl_tokens: wiki-eval tokens for the student's perplexity (0: skip).
        checkpoint_every: Steps between checkpoints.
        seed: Every random draw.
        device: ``auto``, ``cpu``, ``cuda``...
    """

    teacher: str = "smollm2-135m"
    student: str | None = None
    student_layers: Any = None
    student_scheme: str | None = None
    loss: str = "promptkd"
    data: str = "olmo-gen"
    unseen_tasks: str | None = None
    samples: int = 256
    seq_len: int = 256
    max_new_tokens: int = 32
    steps: int = 100
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 5e-5
    warmup: float = 0.0
    schedule: str = "constant"
    prompt_length: int = 7
    prompt_init: str = "Suppose you are a student."
    gkd_beta: float = 0.1
    on_policy: float = 0.5
    skew_alpha: float = 0.1
    skew: str = "reverse"
    replay_size: int = 1000
    replay_threshold: float = 0.1
    val_every: int = 10
    val_samples: int = 8
    eval_samples: int = 16
    eval_seeds: tuple = (0, 1, 2)
    eval_greedy: bool = True
    ppl_tokens: int = 0
    checkpoint_every: int = 10
    seed: int = 0
    device: str = "auto"

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> "DistillConfig":
        """From flag / recipe values (``None`` = the default); unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(settings) - names)
        if unknown:
            raise CompactLMError(f"--recipe: unknown setting {unknown[0]!r}; known: {', '.join(sorted(names))}")
        cfg = cls(**{k: v for k, v in settings.items() if v is not None})
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if isinstance(self.eval_seeds, str):
            try:
                self.eval_seeds = tuple(int(s) for s in self.eval_seeds.split(",") if s.strip())
            except ValueError:
                raise CompactLMError(f"--eval-seeds: expected comma-separated integers, got {self.eval_seeds!r}") from None
        self.eval_seeds = tuple(int(s) for s in self.eval_seeds)
        if self.loss not in METHODS:
            raise CompactLMError(f"--loss: expected one of {', '.join(METHODS)}, got {self.loss!r}")
        if self.skew not in ("reverse", "forward"):
            raise CompactLMError(f"--skew: expected reverse or forward, got {self.skew!r}")
        for name in ("gkd_beta", "skew_alpha"):
            if not 0 < getattr(self, name) < 1:
                raise CompactLMError(f"--{name.replace('_', '-')}: expected a value in (0, 1), got {getattr(self, name)}")
        if not 0 <= self.on_policy <= 1:
            raise CompactLMError(f"--on-policy: expected a probability in [0, 1], got {self.on_policy}")
        for name in ("prompt_length", "max_new_tokens", "samples", "val_every"):
            if getattr(self, name) < 1:
                raise CompactLMError(f"--{name.replace('_', '-')}: expected a positive number, got {getattr(self, name)}")
        if self.seq_len <= self.max_new_tokens:
            raise CompactLMError(f"--seq-len {self.seq_len} must exceed --max-new-tokens {self.max_new_tokens}")
        if self.student is not None and self.student_layers is not None:
            raise CompactLMError("--student-layers: not used with --student (a given student is not pruned)")

    def train_config(self):
        from compactlm.train import TrainConfig

        return TrainConfig(steps=self.steps, batch_size=self.batch_size, grad_accum=self.grad_accum, lr=self.lr,
                           warmup=self.warmup, schedule=self.schedule, seed=self.seed,
                           checkpoint_every=self.checkpoint_every)

    def job(self) -> dict:
        """The settings a checkpoint must match to be resumed (everything but evaluation and device)."""
        skip = {"eval_samples", "eval_seeds", "eval_greedy", "ppl_tokens", "checkpoint_every", "device", "steps",
                "batch_size", "grad_accum", "lr", "warmup", "schedule", "seed"}  # the last ones: TrainConfig's
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}


# --------------------------------------------------------------------------- batches

def trim(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the padding columns every row of a right-padded micro-batch shares (the trainer's ``collate``)."""
    width = int(batch["attention_mask"].sum(1).max())
    return {k: (v[:, :width] if v.dim() == 2 else v) for k, v in batch.items()}


def prompts_of(batch: Mapping[str, torch.Tensor]) -> list[list[int]]:
    ids, plen = batch["input_ids"].cpu(), batch["prompt_len"].cpu()
    return [ids[i, : int(plen[i])].tolist() for i in range(ids.shape[0])]


def targets(batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(labels (B, T-1), mask (B, T-1) bool)``: next tokens and whether each is a response token."""
    labels = batch["input_ids"][:, 1:]
    mask = (batch["response_mask"][:, 1:] * batch["attention_mask"][:, 1:]).bool()
    return labels, mask


def logits_of(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Next-token logits ``(B, T-1, V)`` of a causal LM on a packed batch."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    return out.logits[:, :-1]


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


# --------------------------------------------------------------------------- PromptKD's modules

class PromptedPair(nn.Module):
    """Student and soft-prompted teacher trained together: trainable = the student + the soft prompt φ.

    ``forward`` returns ``(student logits, prompted-teacher logits)``, both ``(B, T, V)`` and
    aligned with the inputs (the soft-prompt positions dropped).
    """

    def __init__(self, student: nn.Module, prompted_teacher: nn.Module, n_virtual: int):
        super().__init__()
        self.student = student
        self.teacher = prompted_teacher
        self.n_virtual = n_virtual

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        s = self.student(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        tp = self.teacher(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        return s, tp[:, self.n_virtual:]

    def soft_prompt(self) -> torch.Tensor:
        """φ ``(prompt_length, hidden)``."""
        return self.teacher.prompt_encoder["default"].embedding.weight


def prompted_teacher(teacher: nn.Module, tokenizer, length: int, init_text: str) -> nn.Module:
    """``teacher`` with a trainable ``peft`` soft prompt of ``length`` tokens initialised from ``init_text``.

    The teacher's own weights are frozen (peft); the prompt starts as the input embeddings of the
    text's tokens, repeated or cut to ``length`` (peft's TEXT init, done here so no tokenizer path
    is needed).
    """
    try:
        from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model
    except ImportError:
        raise CompactLMError("--loss promptkd needs the peft package: pip install peft") from None
    teacher.requires_grad_(False)
    cfg = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=length,
                             prompt_tuning_init=PromptTuningInit.RANDOM)
    model = get_peft_model(teacher, cfg)
    ids = list(tokenizer(init_text, add_special_tokens=False)["input_ids"]) if init_text else []
    if ids:
        ids = (ids * (length // len(ids) + 1))[:length]
        emb = teacher.get_input_embeddings()
        with torch.no_grad():
            init = emb(torch.tensor(ids, device=emb.weight.device)).float()
            model.prompt_encoder["default"].embedding.weight.copy_(init)
    return model


# --------------------------------------------------------------------------- the loss of every method

class GenerativeDistillLoss:
    """``compute_loss(model, batch)`` of one method (see the module table), with ``on_step`` and state.

    Args:
        method: One of :data:`METHODS`.
        teacher: The frozen teacher (``None`` for ``sft``; for ``promptkd`` the model trained is a
            :class:`PromptedPair` and ``teacher`` is unused).
        tokenizer: For pad / EOS ids of sampling.
        config: :class:`DistillConfig`.
        val_batch: DistiLLM's fixed validation batch (packed pairs).
    """

    def __init__(self, method: str, teacher: nn.Module | None, tokenizer, config: DistillConfig,
                 val_batch: Mapping[str, torch.Tensor] | None = None):
        from compactlm.data.instructions import pad_id

        self.method = method
        self.teacher = teacher
        if teacher is not None:
            teacher.eval().requires_grad_(False)
        self.cfg = config
        self.pad, self.eos = pad_id(tokenizer), tokenizer.eos_token_id
        self.val_batch = val_batch
        self.step = 0
        self.micro = 0
        # DistiLLM's adaptive off-policy state
        self.replay_p = 0.0
        self.prev_val: float | None = None
        self.buffer: list[tuple[list[int], list[int]]] = []

    # ---- resumable state ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"replay_p": self.replay_p, "prev_val": self.prev_val,
                "buffer": [[p, r] for p, r in self.buffer]}

    def load_state_dict(self, state: Mapping) -> None:
        self.replay_p = float(state["replay_p"])
        self.prev_val = None if state["prev_val"] is None else float(state["prev_val"])
        self.buffer = [(list(p), list(r)) for p, r in state["buffer"]]

    # ---- hooks --------------------------------------------------------------------------------------
    def on_step(self, model: nn.Module, step: int, total: int) -> None:
        self.step, self.micro = step, 0
        if self.method == "distillm" and self.val_batch is not None and step > 0 and step % self.cfg.val_every == 0:
            self._adapt(model)

    def _rng(self, salt: int) -> random.Random:
        return random.Random(((self.cfg.seed * 1_000_003 + self.step) * 1009 + self.micro) * 31 + salt)

    def _seed(self) -> int:
        return self._rng(7).randrange(2**31)

    # ---- sampling -----------------------------------------------------------------------------------
    def _sample(self, student: nn.Module, prompts: list[list[int]]) -> list[list[int]]:
        from compactlm.eval.generation import generate_responses

        return generate_responses(student, prompts, self.pad, self.eos, self.cfg.max_new_tokens, temperature=1.0,
                                  top_p=1.0, seed=self._seed(), batch_size=len(prompts))

    def _packed(self, prompts, responses, device) -> dict[str, torch.Tensor]:
        from compactlm.data.instructions import pack

        return {k: v.to(device) for k, v in pack(prompts, responses, self.pad).items()}

    def _on_policy_batch(self, student: nn.Module, batch) -> dict[str, torch.Tensor]:
        prompts = prompts_of(batch)
        return self._packed(prompts, self._sample(student, prompts), batch["input_ids"].device)

    def _replay_batch(self, student: nn.Module, batch) -> dict[str, torch.Tensor]:
        prompts = prompts_of(batch)
        fresh = self._sample(student, prompts)
        self.buffer.extend(zip(prompts, fresh))
        del self.buffer[: max(0, len(self.buffer) - self.cfg.replay_size)]
        rng = self._rng(11)
        picks = [self.buffer[rng.randrange(len(self.buffer))] for _ in prompts]
        return self._packed([p for p, _ in picks], [r for _, r in picks], batch["input_ids"].device)

    # ---- DistiLLM's schedule ------------------------------------------------------------------------
    def _distillm_loss(self, z_s, z_t, mask):
        fn = L.skew_reverse_kl if self.cfg.skew == "reverse" else L.skew_forward_kl
        return fn(z_s, z_t, mask, alpha=self.cfg.skew_alpha)

    @torch.no_grad()
    def _adapt(self, model: nn.Module) -> None:
        student = _unwrap(model)
        device = next(student.parameters()).device
        vb = {k: v.to(device) for k, v in self.val_batch.items()}
        _, mask = targets(vb)
        value = float(self._distillm_loss(logits_of(student, vb), logits_of(self.teacher, vb), mask))
        if self.prev_val is not None and value - self.prev_val > self.cfg.replay_threshold:
            self.replay_p = min(1.0, round(self.replay_p + 0.1, 10))
        self.prev_val = value

    # ---- the losses ---------------------------------------------------------------------------------
    def promptkd_terms(self, model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """``(L_T, L_S, parts)`` of PromptKD on ``batch`` (already the student's samples)."""
        pair: PromptedPair = _unwrap(model)
        z_s, z_tp = model(batch["input_ids"], batch["attention_mask"])
        z_s, z_tp = z_s[:, :-1], z_tp[:, :-1]
        _, mask = targets(batch)
        with torch.no_grad(), pair.teacher.disable_adapter():
            z_t = logits_of(pair.teacher, batch)
        lam = L.linear_decay(self.step, self.cfg.steps)
        loss_t, parts = L.promptkd_prompt_loss(z_tp, z_s, z_t, mask, lam)
        loss_s = L.reverse_kl(z_s, z_tp, mask)
        parts = {**parts, "lambda": torch.tensor(lam), "rkl": loss_s.detach()}
        return loss_t, loss_s, parts

    def __call__(self, model: nn.Module, batch: Mapping[str, torch.Tensor]):
        m, cfg = self.method, self.cfg
        parts: dict[str, torch.Tensor] = {}
        try:
            if m == "promptkd":
                batch = self._on_policy_batch(_unwrap(model).student, batch)
                loss_t, loss_s, parts = self.promptkd_terms(model, batch)
                return loss_t + loss_s, parts
            student = _unwrap(model)
            if m == "gkd":
                on = self._rng(3).random() < cfg.on_policy
                parts["on_policy"] = torch.tensor(float(on))
                if on:
                    batch = self._on_policy_batch(student, batch)
            elif m == "distillm":
                use = self._rng(5).random() < self.replay_p
                parts["replay"], parts["replay_p"] = torch.tensor(float(use)), torch.tensor(self.replay_p)
                if use:
                    batch = self._replay_batch(student, batch)
            labels, mask = targets(batch)
            z_s = logits_of(model, batch)
            if m == "sft":
                value = L.gt_cross_entropy(z_s, labels, mask)
            else:
                with torch.no_grad():
                    z_t = logits_of(self.teacher, batch)
                if m in ("kd", "seqkd"):
                    value = L.logit_kd(z_s, z_t, mask)
                elif m == "rkl":
                    value = L.reverse_kl(z_s, z_t, mask)
                elif m == "gkd":
                    value = L.generalized_jsd(z_s, z_t, mask, beta=cfg.gkd_beta)
                else:
                    value = self._distillm_loss(z_s, z_t, mask)
            parts[m] = value.detach()
            return value, parts
        finally:
            self.micro += 1


# --------------------------------------------------------------------------- side state (resume)

class LoopState:
    """The loss object's own state, saved atomically beside the trainer checkpoint at the same steps."""

    def __init__(self, checkpoint_dir: Path | None, loss: GenerativeDistillLoss, every: int):
        self.dir, self.loss, self.every = checkpoint_dir, loss, every

    def save(self, step: int) -> None:
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{STATE_FILE}.tmp"
        torch.save({"step": step, "state": self.loss.state_dict()}, tmp)
        os.replace(tmp, self.dir / STATE_FILE)

    def restore(self, step: int) -> None:
        if self.dir is None or step == 0:
            return
        path = self.dir / STATE_FILE
        state = torch.load(path, weights_only=True) if path.exists() else None
        if state is None or state["step"] != step:
            raise CompactLMError(f"--out: {self.dir} holds a trainer checkpoint at step {step} without the matching "
                                 "distillation state; pass --overwrite to start over")
        self.loss.load_state_dict(state["state"])

    def on_step(self, model: nn.Module, step: int, total: int) -> None:
        self.loss.on_step(model, step, total)
        if self.every and step > 0 and step % self.every == 0:
            self.save(step)  # the trainer has just written its checkpoint of step `step`


# --------------------------------------------------------------------------- SeqKD's teacher responses

def _fingerprint(model: nn.Module) -> str:
    h = hashlib.sha256()
    for i, p in enumerate(model.parameters()):
        if i >= 4:
            break
        h.update(repr((tuple(p.shape), float(p.detach().float().sum()), float(p.detach().float().abs().max()))).encode())
    return h.hexdigest()[:16]


def teacher_responses(teacher: nn.Module, tokenizer, examples, max_new_tokens: int, batch_size: int = 16) -> list[str]:
    """Greedy teacher responses for ``examples`` (SeqKD's targets), cached in ``$COMPACTLM_CACHE/distill``."""
    from compactlm.cache import cache_dir
    from compactlm.data.instructions import pad_id, prompt_ids
    from compactlm.eval.generation import decode_response, generate_responses

    prompts = [prompt_ids(tokenizer, e) for e in examples]
    key = hashlib.sha256(json.dumps([_fingerprint(teacher), max_new_tokens, prompts]).encode()).hexdigest()[:20]
    path = cache_dir("distill") / f"seqkd-{key}.json"
    if path.exists():
        return json.loads(path.read_text())["responses"]
    log.info("seqkd: generating %d teacher responses (cached as %s)", len(prompts), path)
    gen = generate_responses(teacher, prompts, pad_id(tokenizer), tokenizer.eos_token_id, max_new_tokens, 0.0,
                             batch_size=batch_size)
    texts = [decode_response(tokenizer, g) for g in gen]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"responses": texts}))
    os.replace(tmp, path)
    return texts


# --------------------------------------------------------------------------- the whole run

def _load(name: str, device):
    from compactlm.models import load_model

    model, tok = load_model(name, device=device)
    if tok is None:
        from compactlm.data.char_tokenizer import char_tokenizer

        tok = char_tokenizer()  # tiny random models ship no tokenizer
    return model, tok


def prepare_data(config: DistillConfig, tokenizer):
    """``(splits, train tensors, validation tensors)`` of the run (see :mod:`compactlm.data.instructions`)."""
    from compactlm.data import instructions as I

    examples = I.load_instructions(config.data)
    tasks = {e.task for e in examples}
    unseen = ([t.strip() for t in config.unseen_tasks.split(",") if t.strip()] if config.unseen_tasks
              else I.default_unseen(config.data, tasks))
    splits = I.split_instructions(examples, unseen, config.eval_samples, config.samples + config.val_samples,
                                  seed=config.seed, keep=I.fits(tokenizer, config.seq_len, config.max_new_tokens))
    val, splits.train = splits.train[: config.val_samples], splits.train[config.val_samples:]
    if len(splits.train) < config.batch_size:
        raise CompactLMError(f"--samples: only {len(splits.train)} training pairs fit --seq-len {config.seq_len}; "
                             f"fewer than --batch-size {config.batch_size}")
    if splits.skipped:
        log.info("prompts longer than %d tokens skipped per task: %s", config.seq_len - config.max_new_tokens,
                 splits.skipped)
    val_t = I.encode_examples(tokenizer, val, config.seq_len, config.max_new_tokens) if val else None
    return splits, val_t


def run_distill(config: DistillConfig | None = None, out: str | os.PathLike | None = None, overwrite: bool = False,
                progress: bool = True, teacher: nn.Module | None = None, tokenizer=None, student: nn.Module | None = None,
                stop_after: int | None = None, **overrides) -> dict:
    """Distil ``config.teacher`` into a student, evaluate it, and write the run directory ``out``.

    Args:
        config: :class:`DistillConfig` (``overrides`` replace its fields).
        out: Run directory (``<out>/model``: the student as a plain HF checkpoint — a quantized run
            dir when ``student_scheme`` is set — ``config.json``, ``report.json``); ``None``: nothing written.
        teacher, tokenizer, student: Already loaded models (else loaded / derived from the config).
        stop_after: Stop after this many steps in total (simulates an interruption; no run dir is written).

    Returns:
        The report (also ``report.json``): ``summary``, ``history``, ``eval`` (ROUGE-L), parameters, timings.

    Example:
        >>> from compactlm.distill.generative import run_distill
        >>> report = run_distill(teacher="smollm2-135m", student_layers=15, loss="promptkd", steps=100,
        ...                      out="runs/promptkd")
    """
    from accelerate import Accelerator

    from compactlm.data import instructions as I
    from compactlm.devices import choose_device
    from compactlm.distill.students import depth_pruned_student, quantize_student
    from compactlm.train import Trainer, resume_dir

    config = dataclasses.replace(config or DistillConfig(), **overrides)
    config.validate()
    device = choose_device(config.device)
    ckpt = None if out is None else resume_dir(out, overwrite)
    torch.manual_seed(config.seed)
    t_start = time.perf_counter()
    if teacher is None:
        teacher, tokenizer = _load(config.teacher, device)
    elif tokenizer is None:
        from compactlm.data.char_tokenizer import char_tokenizer

        tokenizer = char_tokenizer()
    kept = None
    if student is None and config.student is not None:
        student, _ = _load(config.student, device)
    elif student is None:
        n = teacher.config.num_hidden_layers
        student, kept = depth_pruned_student(teacher, config.student_layers or max(1, n // 2))
    if student.config.vocab_size != teacher.config.vocab_size:
        raise CompactLMError(f"--student: vocabulary {student.config.vocab_size} differs from the teacher's "
                             f"{teacher.config.vocab_size}; the student must share the teacher's tokenizer")
    if config.student_scheme:
        quantize_student(student, config.student_scheme)
    student.requires_grad_(True)
    teacher_params = sum(p.numel() for p in teacher.parameters())
    splits, val_t = prepare_data(config, tokenizer)
    responses = None
    if config.loss == "seqkd":
        responses = teacher_responses(teacher, tokenizer, splits.train, config.max_new_tokens)
    data = I.encode_examples(tokenizer, splits.train, config.seq_len, config.max_new_tokens, responses)
    method_teacher = None if config.loss == "sft" else teacher
    model: nn.Module = student
    extra: tuple[nn.Module, ...] = () if method_teacher is None else (teacher,)
    prompt_params = 0
    if config.loss == "promptkd":
        model = PromptedPair(student, prompted_teacher(teacher, tokenizer, config.prompt_length, config.prompt_init),
                             config.prompt_length)
        prompt_params = model.soft_prompt().numel()
        method_teacher, extra = None, ()
    loss = GenerativeDistillLoss(config.loss, method_teacher, tokenizer, config, val_batch=val_t)
    state = LoopState(ckpt, loss, config.checkpoint_every)
    accelerator = Accelerator(cpu=device.type == "cpu")
    trainer = Trainer(model, loss, data, config.train_config(), checkpoint_dir=ckpt, accelerator=accelerator,
                      progress=progress, extra_modules=extra, on_step=state.on_step, collate=trim, train_mode=False,
                      job={"command": "distill", **config.job()}, desc=config.loss)
    state.restore(trainer.step)
    t0 = time.perf_counter()
    history = trainer.train(stop_after=stop_after)
    state.save(trainer.step)
    trained = _unwrap(trainer.unwrapped)
    student = trained.student if isinstance(trained, PromptedPair) else trained
    student.eval().requires_grad_(False)
    report: dict = {
        "method": config.loss, "teacher": config.teacher, "student": config.student or "depth-pruned teacher",
        "kept_blocks": kept, "student_scheme": config.student_scheme,
        "params": {"teacher": teacher_params, "student": sum(p.numel() for p in student.parameters()),
                   "prompt": prompt_params, "prompt_fraction_of_teacher": prompt_params / teacher_params},
        "data": {"source": config.data, "train_pairs": len(splits.train), "seen_tasks": list(splits.seen),
                 "unseen_tasks": list(splits.unseen), "eval_pairs": {t: len(v) for t, v in splits.eval.items()},
                 "skipped_long_prompts": splits.skipped,
                 "train_tasks": {t: sum(e.task == t for e in splits.train) for t in splits.seen}},
        "steps": trainer.step, "resumed_at_step": trainer.resumed_at, "seconds_train": round(trainer.seconds, 2),
        "seconds_this_run": round(time.perf_counter() - t0, 2), "history": history,
        "final_state": loss.state_dict() | {"buffer": len(loss.buffer)},
    }
    if stop_after is not None and trainer.step < config.steps:
        return report
    if config.eval_samples > 0:
        from compactlm.eval.generation import evaluate_rouge

        t1 = time.perf_counter()
        report["eval"] = evaluate_rouge(student, tokenizer, splits.eval, splits.seen, config.eval_seeds,
                                        config.eval_greedy, config.max_new_tokens)
        report["seconds_eval"] = round(time.perf_counter() - t1, 2)
    if config.ppl_tokens > 0:
        from compactlm.eval.perplexity import perplexity

        report["wiki_eval_ppl"] = perplexity(student, tokenizer, "wiki-eval", seq_len=min(512, config.ppl_tokens),
                                             max_tokens=config.ppl_tokens)["ppl"]
    report["seconds_total"] = round(time.perf_counter() - t_start, 2)
    report["summary"] = summarize(report)
    if out is not None and trainer.accelerator.is_main_process:
        _write(out, overwrite, student, tokenizer, config, report)
        if ckpt is not None:
            shutil.rmtree(ckpt, ignore_errors=True)
    return report


def summarize(report: Mapping) -> dict:
    """One flat line of a report: method, steps, seconds, ROUGE-L (sampled mean/std, greedy) seen/unseen."""
    out = {"method": report["method"], "steps": report["steps"], "seconds_train": report["seconds_train"],
           "student_params": report["params"]["student"], "prompt_params": report["params"]["prompt"]}
    ev = report.get("eval") or {}
    for group in ("seen", "unseen"):
        s = (ev.get("sampled") or {}).get(group)
        if s:
            out[f"rougeL_{group}"], out[f"rougeL_{group}_std"] = round(s["mean"], 2), round(s["std"], 2)
        g = (ev.get("greedy") or {}).get(group)
        if g is not None:
            out[f"rougeL_{group}_greedy"] = round(g, 2)
    if "wiki_eval_ppl" in report:
        out["wiki_eval_ppl"] = round(report["wiki_eval_ppl"], 3)
    return out


def _write(out, overwrite: bool, student: nn.Module, tokenizer, config: DistillConfig, report: dict) -> None:
    from compactlm.io import atomic_dir, write_json

    with atomic_dir(out, overwrite=True) as tmp:  # resume_dir already refused a finished run without --overwrite
        if config.student_scheme:
            from compactlm.models import save_quantized
            from compactlm.qat import convert_qat

            convert_qat(student)
            save_quantized(student, tokenizer, tmp, extra_config={"method": f"distill-{config.loss}",
                                                                   "scheme": config.student_scheme})
        else:
            student.save_pretrained(tmp / "model")
            tokenizer.save_pretrained(tmp / "model")
        write_json(tmp / "config.json", {"command": "distill", **dataclasses.asdict(config)})
        write_json(tmp / "report.json", report)


__all__ = ["METHODS", "DistillConfig", "GenerativeDistillLoss", "PromptedPair", "prompted_teacher", "run_distill",
           "teacher_responses", "summarize", "trim"]
