"""CTR models' building blocks: reusable layers (``layers``), CoFARS context selection (``cofars``)
and LARR scene aggregation (``larr``). Pure PyTorch; models that compose them come later."""
