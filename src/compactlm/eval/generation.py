"""Batched response generation and ROUGE-L scoring of instruction following.

Protocol of MiniLLM / DistiLLM / PromptKD (METHODS.md §3.1): responses are sampled with
temperature 1, top-p 1, no top-k, under several seeds (and decoded greedily beside it); each
response is scored by ROUGE-L F-measure (the ``rouge-score`` package, ``rougeL``, Porter stemming)
against every reference, keeping the maximum, ×100. Scores are averaged per task, then over the
seen and the unseen tasks; over seeds we report mean ± std (population std, ``ddof=0``).

Generation (:func:`generate_responses`) goes through ``model.generate`` with a KV cache, the
real-inference path of ``compactlm generate`` (:mod:`compactlm.serve.generate`), batched with left
padding; tokens after the first EOS are dropped. Draws depend only on ``seed`` (the global RNG is
restored afterwards), so a training loop that samples stays exactly resumable.
"""

from __future__ import annotations

import functools
import math
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn

from compactlm.errors import CompactLMError


@functools.lru_cache(maxsize=1)
def _scorer():
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise CompactLMError("ROUGE-L needs the rouge-score package: pip install rouge-score") from None
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, references: Iterable[str]) -> float:
    """ROUGE-L F-measure ×100 of ``prediction``, the max over ``references`` (0 for no reference)."""
    scorer = _scorer()
    return max((100.0 * scorer.score(ref, prediction)["rougeL"].fmeasure for ref in references), default=0.0)


def _stdev(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


@torch.no_grad()
def generate_responses(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    pad_id: int,
    eos_id: int | None,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
) -> list[list[int]]:
    """New tokens for each prompt (EOS kept, anything after it dropped).

    Args:
        model: A causal LM (``generate``); its mode is restored afterwards.
        prompts: Token ids per prompt (no padding).
        pad_id / eos_id: Padding and end-of-sequence ids.
        temperature: 0 for greedy decoding, else the sampling temperature (top-k off).
        top_p: Nucleus mass when sampling.
        seed: The draws depend only on this seed (global RNG state restored on return).
        batch_size: Prompts per ``generate`` call (left padded).
    """
    if max_new_tokens < 1:
        raise CompactLMError("--max-new-tokens: expected a positive number of tokens")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    kwargs: dict = dict(max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=eos_id)
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    out: list[list[int]] = []
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for start in range(0, len(prompts), batch_size):
                chunk = prompts[start:start + batch_size]
                width = max(len(p) for p in chunk)
                ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
                am = torch.zeros_like(ids)
                for i, p in enumerate(chunk):
                    ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
                    am[i, width - len(p):] = 1
                gen = model.generate(input_ids=ids.to(device), attention_mask=am.to(device), **kwargs)[:, width:]
                for row in gen.tolist():
                    if eos_id is not None and eos_id in row:
                        row = row[: row.index(eos_id) + 1]
                    out.append(row)
    finally:
        model.train(was_training)
    return out


def decode_response(tokenizer, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=True).strip()


def evaluate_rouge(
    model: nn.Module,
    tokenizer,
    eval_sets: Mapping[str, Sequence],
    seen: Iterable[str],
    seeds: Sequence[int] = (0, 1, 2),
    greedy: bool = True,
    max_new_tokens: int = 32,
    batch_size: int = 16,
    keep_text: int = 2,
) -> dict:
    """ROUGE-L of ``model`` on instruction examples per task (sampled under ``seeds``, and greedy).

    Args:
        eval_sets: ``{task: [InstructionExample]}`` (:mod:`compactlm.data.instructions`).
        seen: The training tasks; the others count as unseen.
        seeds: Sampling seeds (temperature 1, top-p 1); empty for greedy only.
        greedy: Also decode greedily.
        keep_text: Responses per task kept in the result (for reading), per decoding.

    Returns:
        ``{"sampled": {"per_seed": [{task: score}], "tasks": {task: {"mean", "std"}}, "seen": {"mean",
        "std"}, "unseen": {...}}, "greedy": {"tasks": {task: score}, "seen": x, "unseen": x},
        "examples": {task: [...]}}`` with scores ×100 (absent parts when not asked for).
    """
    from compactlm.data.instructions import pad_id, prompt_ids

    seen = set(seen)
    tasks = sorted(eval_sets)
    prompts = {t: [prompt_ids(tokenizer, e) for e in eval_sets[t]] for t in tasks}
    pid, eos = pad_id(tokenizer), tokenizer.eos_token_id
    examples: dict[str, list] = {t: [] for t in tasks}

    def run(temperature: float, seed: int, label: str) -> dict[str, float]:
        scores = {}
        for t in tasks:
            gen = generate_responses(model, prompts[t], pid, eos, max_new_tokens, temperature, 1.0, seed, batch_size)
            texts = [decode_response(tokenizer, g) for g in gen]
            per = [rouge_l(x, e.references) for x, e in zip(texts, eval_sets[t])]
            scores[t] = sum(per) / len(per)
            for x, e, s in list(zip(texts, eval_sets[t], per))[:keep_text]:
                examples[t].append({"decoding": label, "instruction": e.instruction[:200], "response": x,
                                    "reference": e.references[0], "rougeL": round(s, 2)})
        return scores

    def group_mean(scores: Mapping[str, float], which: bool) -> float | None:
        vals = [v for t, v in scores.items() if (t in seen) == which]
        return sum(vals) / len(vals) if vals else None

    result: dict = {"tasks": tasks, "seen_tasks": sorted(seen & set(tasks)), "unseen_tasks": sorted(set(tasks) - seen)}
    if seeds:
        per_seed = [run(1.0, s, f"sample-seed{s}") for s in seeds]
        result["sampled"] = {
            "seeds": list(seeds),
            "per_seed": per_seed,
            "tasks": {t: {"mean": sum(p[t] for p in per_seed) / len(per_seed), "std": _stdev([p[t] for p in per_seed])}
                      for t in tasks},
        }
        for name, which in (("seen", True), ("unseen", False)):
            vals = [group_mean(p, which) for p in per_seed]
            if vals[0] is not None:
                result["sampled"][name] = {"mean": sum(vals) / len(vals), "std": _stdev(vals)}
    if greedy:
        g = run(0.0, 0, "greedy")
        result["greedy"] = {"tasks": g, "seen": group_mean(g, True), "unseen": group_mean(g, False)}
    result["examples"] = examples
    return result


__all__ = ["rouge_l", "generate_responses", "decode_response", "evaluate_rouge"]
