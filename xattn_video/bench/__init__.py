"""Speed: the end-to-end benchmark (e2e.py); the operator benchmark and synthetic inputs move here too."""
