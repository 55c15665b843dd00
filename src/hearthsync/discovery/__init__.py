"""Reserved for a later issue; see DESIGN.md (components)."""
