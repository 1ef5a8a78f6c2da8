"""Logging set-up shared by the stage scripts and the CLI."""
from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any


def setup_logging(level: str | None = None) -> None:
    """Timestamped INFO logs on stderr (LOGLEVEL overrides)."""
    logging.basicConfig(level=(level or os.environ.get("LOGLEVEL", "INFO")).upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def open_live(live_dir: Path | str) -> Any:
    """A DVCLive logger for one stage's <live_dir>/metrics.json and <live_dir>/plots/.

    dvc.yaml declares those files itself (dvcyaml=False), and a stage is a step of the pipeline,
    not an experiment of its own (save_dvc_exp=False). What DVCLive would still do with the DVC
    repository it opens (0.3 s per stage) is to git-add, at the end of a stage under `dvc exp run`,
    files of its folder that no stage tracks, after reading the whole pipeline's index again (1.1 s
    per stage here); every file it writes here is a declared output, so that step is skipped too.
    Studio's live updates still follow DVC_STUDIO_* environment variables.
    """
    return _stage_live_class()(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False)


@functools.cache
def _stage_live_class() -> type:
    from dvclive import Live  # lazy: dvclive imports its own stack, and only training logs

    class StageLive(Live):
        def _init_dvc(self) -> None:  # DVCLive's hook that opens the DVC repository
            self._dvc_file = self._init_dvc_file()

    return StageLive
