"""Importers: other harnesses' outputs turned into ordinary run directories of ours (see lm_eval.py)."""
