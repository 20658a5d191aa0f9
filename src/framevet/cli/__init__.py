"""The command line: one module per command; :mod:`~framevet.cli.main` dispatches."""
