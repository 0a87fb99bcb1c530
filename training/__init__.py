"""Training code: data preparation, training loops and evaluation."""
