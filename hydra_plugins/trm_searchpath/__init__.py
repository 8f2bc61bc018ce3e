"""Lets `--config-name exp01a` find configs/experiments/exp01a.yaml.

Hydra looks up a primary config only in its search path, and a primary config cannot extend
the search path it is found through; a SearchPathPlugin (discovered in the `hydra_plugins`
namespace) is Hydra's documented way to add a directory.
"""

from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

_EXPERIMENTS = Path(__file__).resolve().parents[2] / "configs" / "experiments"


class TRMExperimentsSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="trm-experiments", path=f"file://{_EXPERIMENTS}")
