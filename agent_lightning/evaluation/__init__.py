"""How well a trained policy does: on a prepared dataset's labelled split, and in environments."""
