"""The `hf-sparseout` command line (installed as the ``hf_sparseout_cli`` package)."""
