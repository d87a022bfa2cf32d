"""Small shared helpers (atomic file I/O, image grids)."""
