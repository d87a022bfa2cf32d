"""The three methods as pipelines of named stages — :mod:`~fastflow.pipelines.slimflow`,
:mod:`~fastflow.pipelines.instaflow`, :mod:`~fastflow.pipelines.oftsr` — each with ``run(out,
scale, seed)`` and ``run_seeds(out, seeds, scale)``; what they share is in ``stages.py`` (training
stages, budgets, seeds), ``digits.py`` (scoring) and ``report.py`` (typed rows, tables, figures)."""
