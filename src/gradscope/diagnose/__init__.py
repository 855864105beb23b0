"""gradscope.diagnose."""
