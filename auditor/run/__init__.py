"""The jobs that tie the layers together: one edit, a batch, a sequence with its monitor, the workspace (revert, replay), apply-reviewed, the capacity report."""
