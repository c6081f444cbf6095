"""Exchange simulator: speaks the venues' real protocols from a known ground-truth surface."""
