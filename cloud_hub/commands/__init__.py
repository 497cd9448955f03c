"""`cloud-hub` subcommands, one module per area."""
