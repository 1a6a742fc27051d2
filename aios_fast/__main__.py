"""``python -m aios_fast`` is the ``aios-fast`` command."""

from .cli import main

raise SystemExit(main())
