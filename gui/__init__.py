"""The Gradio GUI; builds its widgets from engine.schema."""
