"""jobflow flows composed from the engines' makers."""
