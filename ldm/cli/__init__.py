"""Command-line tools. ``main.py`` (training / testing) lives in :mod:`ldm.cli.train`:
flags in :mod:`ldm.cli.args`, config merging in :mod:`ldm.cli.config`, the run directory in
:mod:`ldm.cli.logdir`, loggers / callbacks / checkpointing in :mod:`ldm.cli.components`."""
