"""``python -m notifier``."""

from notifier.cli import main

raise SystemExit(main())
