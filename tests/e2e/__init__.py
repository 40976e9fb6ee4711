"""End-to-end tests: ``python -m bot run`` against the local Discord and Imgur stand-ins."""
