"""The BentoML service: HTTP APIs for the captioner, the translator and the char LM (no training code)."""
