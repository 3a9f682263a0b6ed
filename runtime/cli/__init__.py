"""The `pillion` command: its subcommands and their flags."""
