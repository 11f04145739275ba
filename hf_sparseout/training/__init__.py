"""Fine-tuning with accelerate: data, model, loop, evaluation, reports (the engine behind `hf-sparseout finetune`)."""
