"""PyTorch sequence models: vocabulary, encoders, decoders, attention, search and checkpoints."""
