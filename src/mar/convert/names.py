"""The checkpoint formats ``mar convert`` reads (kept light: the CLI lists them in
``--help`` without importing torch)."""

FORMAT_NAMES = ("videomae", "hf", "mae", "mar")
