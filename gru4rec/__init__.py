"""gru4rec."""
