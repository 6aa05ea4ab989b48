"""Command-line tools that work on the committed models (no server, no torch)."""
