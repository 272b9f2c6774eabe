"""Serving robustness: request-boundary validation, one bad request failing alone in the engine, and a
server that says so when its engine loop has died (issue 15). Wired in by patches 9-13, 15 and 16."""
