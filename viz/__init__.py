"""Figures and exports built from arrays: never imports streamlit, never loads or runs a model
(analysis/ makes the arrays; docs/DESIGN.md, "Layering")."""
