"""Evaluation: perplexity over strided windows and zero-shot multiple-choice accuracy."""

from compactlm.eval.perplexity import perplexity
from compactlm.eval.zeroshot import loglikelihoods, zeroshot

__all__ = ["loglikelihoods", "perplexity", "zeroshot"]
