"""Knowledge distillation: loss functions (:mod:`.losses`, :mod:`.attention_losses`,
:mod:`.relation_losses`), the QAT objective of causal LMs (:mod:`.lm`), students derived from a
teacher (:mod:`.students`), the distillation of generative LMs into smaller students — SFT, KD,
RKL, SeqKD, GKD, DistiLLM, PromptKD (:mod:`.generative`, the ``compactlm distill`` command) — and
of encoders with contextual KD and DynaBERT (:mod:`.ckd`, :mod:`.dynabert`). Training runs on
:class:`compactlm.train.Trainer`.

The package is also the API verb: ``compactlm.distill(student, teacher, tokenizer, ...)`` calls
:func:`compactlm.api.distill` (:mod:`compactlm.verbs`).
"""

from compactlm.verbs import make_callable

make_callable(__name__, "distill")
