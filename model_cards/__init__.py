"""Model-card templates (Jinja), installed as package data of ``hf_sparseout.model_cards``."""
