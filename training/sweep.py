"""Hydra multirun (`-m`): every job runs even when an earlier one fails, and the sweep's exit
code says whether any failed (a job's own exit would end the whole sweep)."""

from __future__ import annotations

import sys
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback


class SweepExitCode(Callback):
    """Registered in configs/cfg_pretrain.yaml (`hydra.callbacks`)."""

    def __init__(self) -> None:
        self.failed: list[tuple[str, int]] = []

    def on_job_end(self, config: Any, job_return: JobReturn, **kwargs: Any) -> None:
        code = job_return.return_value if job_return.status == JobStatus.COMPLETED else 1
        if code:
            self.failed.append((" ".join(job_return.overrides or []), int(code)))

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        for overrides, code in self.failed:
            print(f"error: sweep job [{overrides}] failed (exit code {code})", file=sys.stderr)
        if self.failed:
            sys.exit(max(code for _, code in self.failed))
