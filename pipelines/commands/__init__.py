"""Subcommands of `lakehouse-dl`, one module per group; each has `add_commands(sub, common, dates)`."""
