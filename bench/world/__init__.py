"""A small procedurally drawn world of characters and backgrounds, for the identity benchmark (issue 10)."""
