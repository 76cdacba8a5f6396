"""What a trained model does, measured: it runs models over images and returns numpy arrays
and tables for viz/ and the pages (docs/DESIGN.md, "Layering")."""
