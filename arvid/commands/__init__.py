"""The ``arvid`` subcommands, one module each (registered in ``arvid.cli.COMMANDS``)."""
