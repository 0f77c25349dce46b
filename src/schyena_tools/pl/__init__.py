"""Plots for scHyena results, in the scanpy way: each function draws on ``ax`` and returns it.

Nothing here calls ``plt.show()``; pass ``ax`` to place a plot in your own figure.
"""

from ._plots import confusion_matrix, imputation_scatter, prediction_confidence, training_history

__all__ = ["confusion_matrix", "imputation_scatter", "prediction_confidence", "training_history"]
