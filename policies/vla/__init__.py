"""The low-level VLA: conv + spatial-softmax perception conditioned on the subtask text, an action-chunk head."""
