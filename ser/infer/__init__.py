"""Layer 7, inference and the command line: `ser predict` (predict) and the `ser` CLI (cli)."""
