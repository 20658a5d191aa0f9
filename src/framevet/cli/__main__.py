"""``python -m framevet.cli``."""

from framevet.cli.main import main

raise SystemExit(main())
