"""Command-line entry points: one module per subcommand, one top-level error handler (main.py)."""
