"""Known-benign messages of transformers and accelerate, moved to the debug log while a command runs.

``finetune`` (and so ``sweep``) runs inside :func:`quiet_known_library_messages`. It puts a
``logging.Filter`` on the few library loggers that emit them, matching each message by its text:

- transformers' ```loss_type=None` was set in the config but it is unrecognized``: every causal-LM
  model built from a config has no ``loss_type``; transformers then uses the causal-LM loss, which is
  the one wanted;
- accelerate's ``Removed shared tensor {'lm_head.weight'} while saving``: tied weights are saved once,
  and a resume ties them again (the checkpoint tests reload and compare them);
- transformers' ``LOAD REPORT`` when the only keys it lists are a classification head's, ``MISSING``:
  a pretrained encoder given a new head for the labels. The project says that once, in its own words.

A matching record is re-logged on the project's logger at DEBUG (``--log-level debug`` shows it,
prefixed with the library logger's name) and dropped from the library's output. Any other message
of those loggers, a load report with other keys included, passes unchanged. Outside the block the
filters are removed: a program that imports hf_sparseout sees the libraries' own output.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager

from hf_sparseout.logs import get_logger

BENIGN = {
    "transformers.modeling_utils": (re.compile(r"`loss_type=None` was set in the config but it is unrecognized"),),
    "accelerate.utils.other": (re.compile(r"Removed shared tensor \{.*\} while saving"),),
}
"""Logger name -> patterns of its messages that are moved to the debug log."""

LOAD_REPORT_LOGGER = "transformers.modeling_utils"
HEAD_PREFIXES = ("classifier.", "score.", "classification_head.", "pre_classifier.")
"""Parameter names of the sequence-classification heads transformers builds (BERT, GPT-2, RoBERTa, DistilBERT)."""

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def new_head_keys(message: str) -> list[str] | None:
    """The keys of a ``LOAD REPORT`` that lists only a classification head's missing parameters, else None."""
    if "LOAD REPORT" not in message:
        return None
    rows = []
    for line in _ANSI.sub("", message).splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) >= 2 and cells[0] and cells[1] and cells[0] != "Key" and not set(cells[0]) <= {"-", "+"}:
            rows.append((cells[0], cells[1]))
    if rows and all(status == "MISSING" and key.startswith(HEAD_PREFIXES) for key, status in rows):
        return sorted(key for key, _ in rows)
    return None


class KnownMessageFilter(logging.Filter):
    """Drops the known-benign messages of one library logger, re-logging each on hf_sparseout's at DEBUG."""

    def __init__(self, logger_name: str, announced: set[tuple[str, ...]]) -> None:
        super().__init__()
        self.logger_name = logger_name
        self.patterns = BENIGN.get(logger_name, ())
        self.announced = announced

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        log = get_logger("library")
        head = new_head_keys(message) if self.logger_name == LOAD_REPORT_LOGGER else None
        if head is not None:
            if tuple(head) not in self.announced:
                self.announced.add(tuple(head))
                log.info(f"New classification head: {', '.join(head)} are not in the checkpoint; they start random.")
        elif not any(p.search(message) for p in self.patterns):
            return True
        log.debug(f"[{record.name}] {_ANSI.sub('', message)}")
        return False


@contextmanager
def quiet_known_library_messages() -> Iterator[None]:
    """Move the known-benign transformers/accelerate messages to the debug log inside the block."""
    announced: set[tuple[str, ...]] = set()
    installed = []
    for name in {*BENIGN, LOAD_REPORT_LOGGER}:
        flt = KnownMessageFilter(name, announced)
        logging.getLogger(name).addFilter(flt)
        installed.append((name, flt))
    try:
        yield
    finally:
        for name, flt in installed:
            logging.getLogger(name).removeFilter(flt)
