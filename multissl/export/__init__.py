"""Export to Hugging Face model folders, model cards, and publishing to the Hub."""
