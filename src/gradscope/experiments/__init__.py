"""gradscope.experiments."""
