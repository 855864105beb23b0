"""gradscope.clip."""
