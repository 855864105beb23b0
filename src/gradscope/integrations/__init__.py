"""gradscope.integrations."""
