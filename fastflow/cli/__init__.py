"""Command-line entry points, one module per verb.

A verb imports the library code it runs inside its function, so ``fastflow --help`` and every verb load only
what they use (importing up front what the verbs use costs ~0.3 s more at start-up: 1.64 s against 1.35 s for
``python -c "import fastflow.cli.main"``, Intel Xeon, 2026-12-08). This package and the package root's lazy
``FlowPipeline`` are the only places fastflow's own modules are imported inside functions
(``tests/test_one_home.py``)."""
