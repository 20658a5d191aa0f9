"""Archive-scale audits: ``framevet scan`` over packages, archives and directories.

:mod:`~framevet.scan.sources` reads the inputs (``.deb`` in place), :mod:`~framevet.scan.work`
runs ``check``'s and ``cfi``'s analysis on one image, :mod:`~framevet.scan.isolate` and
:mod:`~framevet.scan.pools` run it in forked children or on Dask,
:mod:`~framevet.scan.store` keeps results in SQLite, :mod:`~framevet.scan.runner` ties
them together and :mod:`~framevet.scan.dashboard` renders the HTML report.
"""
