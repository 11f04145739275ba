"""Patched checkpoints: save/load round trip, model cards, Hub push."""
