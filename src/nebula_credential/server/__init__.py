"""The Vault-compatible HTTP server (``nebula-credential serve``); see ``app.create_app``."""
