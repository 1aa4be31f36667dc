"""CLI subcommands, one module each; see googlenet/cli.py."""
