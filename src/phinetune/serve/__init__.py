"""`phinetune serve`: an OpenAI-compatible HTTP API over a base model, a run folder or a merged folder."""
