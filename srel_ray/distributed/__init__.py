"""The Ray edge: every module here wraps core functions in one Ray role and re-implements none of them."""
