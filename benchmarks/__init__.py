"""minigrad's benchmarks: see README.md here. Not part of the installed package."""
