"""``python -m bench.service``."""

from bench.service.cli import main

raise SystemExit(main())
