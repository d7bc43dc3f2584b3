"""Vision transformer, DINO/iBOT heads, weight conversion and export."""
