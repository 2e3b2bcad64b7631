"""The π0.5-style model: configuration (presets), modeling (one file), processor, policy adapters."""
