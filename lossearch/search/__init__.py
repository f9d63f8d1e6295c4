"""Search over training configs: the space compiler (YAML -> Optuna), the Tune driver, export.

``lossearch.search.space`` compiles a search-space YAML into an Optuna define-by-run function
for Ray Tune's ``OptunaSearch``; see its module docstring for the format.
"""
