"""hpo: hyperparameter search for CIFAR-10 classifiers on Optuna and PyTorch.

Pipeline: data -> augment/model -> train -> space -> objective/worker -> search -> retrain / report / export,
with the dashboard on the side. See README.md.
"""
