"""The error every layer raises for input it cannot use: a recipe key, a file, a value. Its message
is one line that names what is wrong."""


class RecipeError(ValueError):
    """A recipe, override or input that cannot be used; the message names the key, file or value."""
