"""Search over training configs: the space compiler (YAML -> Optuna), the Tune driver, export.

``lossearch.search.space`` compiles a search-space YAML into an Optuna define-by-run function
for Ray Tune's ``OptunaSearch``; see its module docstring for the format.
"""

from lossearch.search.driver import resume, run_search
from lossearch.search.export import export_best

__all__ = ["export_best", "resume", "run_search"]
