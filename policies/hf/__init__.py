"""Any local transformers model directory as hivla's high level (the `hf:PATH` spec)."""
