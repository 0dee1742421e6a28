"""ipywidgets panels. Thin: they hold a little state, lay out controls and call the core."""
