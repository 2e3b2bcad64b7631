"""Training the π0.5-style model from recorded sessions."""
