"""One module per lambda-bake subcommand; each defines ``register(subparsers)``."""
