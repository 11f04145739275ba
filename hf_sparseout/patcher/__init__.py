"""The patcher: turns every dropout site of a transformers model into Sparseout."""
