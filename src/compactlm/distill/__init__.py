"""Knowledge distillation: loss functions (:mod:`.losses`, :mod:`.attention_losses`) and the
accelerate-based teacher/student trainer (:mod:`.trainer`)."""
