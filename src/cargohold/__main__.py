"""`python -m cargohold` runs the command-line interface."""

from cargohold.cli.main import main

main()
