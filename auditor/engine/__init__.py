"""How an edit is computed: hyper-parameters, the method interface and its registry, ROME, MEMIT, AlphaEdit, the suffix forward pass, key statistics and deltas."""
