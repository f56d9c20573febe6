"""Session rules: quota slices, usage updates, settlement. No I/O."""
