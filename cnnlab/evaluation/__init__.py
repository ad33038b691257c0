"""Using what you trained: metrics, plots and files for a split, and the run's own source.

- :mod:`cnnlab.evaluation.metrics`: scikit-learn's metrics over (logits, labels), plus ECE.
- :mod:`cnnlab.evaluation.plots`: confusion matrix, reliability diagram, misclassified grid.
- :mod:`cnnlab.evaluation.report`: one pass over a loader -> the files of an evaluation;
  ``test_report`` is what a training run calls on its final test split.
- :mod:`cnnlab.evaluation.source`: a run folder or checkpoint -> the model, the class
  names and the dataset it was trained on.

``python -m cnnlab.evaluate`` and ``python -m cnnlab.predict`` are the entry points.
"""
