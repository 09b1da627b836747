"""One module per ``cme-bench`` verb; see ``cme_bench.cli`` for the contract each module follows."""
