"""`make demo` / `ssl-vit demo`: the whole pipeline end to end on real images, ending in a report."""
