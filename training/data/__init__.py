"""Offline data preparation (emoji captions, Ding de-en, fortunes) and loaders for standard formats."""
