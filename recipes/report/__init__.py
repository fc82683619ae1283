"""Output: atomic result sets, Markdown tables and plots."""
