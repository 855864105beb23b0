"""gradscope.run."""
