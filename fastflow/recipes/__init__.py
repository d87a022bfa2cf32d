"""The demo's training recipes: the methods as named stages — :mod:`~fastflow.recipes.slimflow`,
:mod:`~fastflow.recipes.instaflow`, :mod:`~fastflow.recipes.oftsr` — each with ``run(out,
scale, seed)`` and ``run_seeds(out, seeds, scale)``; what they share is in ``stages.py`` (training
stages, budgets, seeds), ``digits.py`` (scoring) and ``report.py`` (typed rows, tables, figures)."""
