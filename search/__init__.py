"""Optuna multi-objective search of the pruning plan and the KD settings (issue 3).

``python -m search`` runs or resumes a study, ``python -m search.retrain`` retrains chosen plans with
the full budget. See ``search/__main__.py`` for the commands.
"""
