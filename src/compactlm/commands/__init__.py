"""CLI subcommands, one module per area (see compactlm.cli.COMMANDS)."""
