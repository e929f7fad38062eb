"""The encoder with the paper's classifier and attention-head masks by hooks (classifier), and the numeric precision of a pass (precision)."""
