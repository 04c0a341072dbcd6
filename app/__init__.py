"""The Gradio app and the services it needs (no model code here)."""
