"""The composition root and the HTTP side: builds every component once from the settings
(components.py), the app and its handlers, the admin listener (via the edge), a worker's lifecycle.

`responses.py` sits lower than the rest: the edge, every handler and gdpr answer through it."""
