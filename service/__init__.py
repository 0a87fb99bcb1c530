"""The BentoML service: HTTP endpoints for the captioner and the translator (no training code here)."""
