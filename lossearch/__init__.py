"""lossearch: search the training loss for fine-tuning causal language models.

Data flows config -> task data -> model -> loss -> training loop (:func:`lossearch.fit.fit`)
-> metrics -> Tune/Optuna -> experiment directory -> analysis; each step has its own module.
"""

__version__ = "0.1.0"
