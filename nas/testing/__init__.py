"""Test and campaign utilities that ship with the library (fault injection for crash-resume)."""
