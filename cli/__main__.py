"""``python -m hf_sparseout_cli``."""

from hf_sparseout_cli.main import main

main()
