"""``python -m aios_fast`` is the ``aios-fast`` command."""

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while it was still loading: a stop, not an error
    raise SystemExit(130) from None

raise SystemExit(main())
