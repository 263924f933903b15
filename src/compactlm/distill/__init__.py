"""Knowledge distillation: loss functions (:mod:`.losses`, :mod:`.attention_losses`), the QAT objective
of causal LMs (:mod:`.lm`), students derived from a teacher (:mod:`.students`) and the distillation of
generative LMs into smaller students — SFT, KD, RKL, SeqKD, GKD, DistiLLM, PromptKD (:mod:`.generative`,
the ``compactlm distill`` command). Training runs on :class:`compactlm.train.Trainer`."""
