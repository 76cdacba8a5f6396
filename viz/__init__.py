"""Figure builders: arrays in, figures out. Never imports streamlit."""
