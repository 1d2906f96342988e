"""One module per CLI command; `launcher.cli.COMMANDS` imports them lazily."""
