"""The files a ``finetune`` writes beside its models, written once the models are saved and again after the
optional analyses: metrics.json, plots, report.md, ``hf_sparseout_run.json``, the model card, thresholds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hf_sparseout.hub import write_model_card
from hf_sparseout.training import reporting
from hf_sparseout.training.args import FinetuneArgs
from hf_sparseout.training.run_state import RunResult
from hf_sparseout.training.threshold_curve import save_thresholds

if TYPE_CHECKING:
    from accelerate import Accelerator


@dataclass
class RunFiles:
    """The files a ``finetune`` writes beside its models (main process): metrics.json, plots, report.md, the
    run file and the model card; with ``directories``, each run's ``thresholds.json`` too."""

    out: Path
    args: FinetuneArgs
    results: list[RunResult]
    task: str
    source: str
    dataset_names: tuple[str, ...]
    from_scratch: bool

    def write(self, accelerator: Accelerator, directories: list[Path] | None = None) -> dict[str, str]:
        """Write (or rewrite) the files; their paths by kind (empty on other processes)."""
        out, args, results, task = self.out, self.args, self.results, self.task
        files: dict[str, str] = {}
        if not accelerator.is_main_process:
            return files
        for result, directory in zip(results, directories or [None] * len(results), strict=True):
            # thresholds saved with the model they were calibrated on
            if result.curve is not None and directory is not None:
                files[f"thresholds_{result.name}"] = str(save_thresholds(result.curve, directory))
        processes = accelerator.num_processes
        files["metrics"] = str(reporting.write_metrics(out, args, results, task, self.source, processes))
        files.update({k: str(out / v) for k, v in reporting.write_plots(out, results, task).items()})
        files["report"] = str(reporting.write_report(out, args, results, task, self.source))
        files["run"] = str(reporting.write_run_file(out, args, results, task, self.dataset_names, self.from_scratch))
        files["card"] = str(write_model_card(out, repo_id=args.hub_model_id))
        return files
